package labels

import (
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		name    string
		key     string
		value   string
		wantErr string // "" for valid
	}{
		{"simple", "dc", "sh1", ""},
		{"empty value", "canary", "", ""},
		{"mixed case and punctuation", "Rack_Row.2-a", "R12_b.3", ""},
		{"prefix", "ferry.example.com/tier", "web", ""},
		{"63-character name and value", long, long, ""},
		{"253-character prefix", strings.Repeat(strings.Repeat("p", 63)+".", 3) + strings.Repeat("p", 61) + "/x", "v", ""},
		{"empty key", "", "v", "the name after any prefix must be at most 63"},
		{"64-character name", long + "a", "v", "at most 63"},
		{"64-character value", "k", long + "a", "must be empty or at most 63"},
		{"value of 120 KB", "k", strings.Repeat("x", 120<<10), "must be empty or at most 63"},
		{"name starts with a dash", "-k", "v", "starting and ending with a letter or digit"},
		{"value ends with a dot", "k", "v.", "starting and ending"},
		{"space in value", "k", "a b", "must be empty"},
		{"slash in name", "a/b/c", "v", "the name after any prefix"},
		{"empty prefix", "/k", "v", "prefix must be a DNS subdomain"},
		{"uppercase prefix", "Example.com/k", "v", "prefix must be a DNS subdomain"},
		{"254-character prefix", strings.Repeat("p", 254) + "/k", "v", "prefix must be a DNS subdomain of 1 to 253"},
		{"reserved group", "group", "production", `"group" is reserved`},
		{"unicode", "ключ", "v", "the name after any prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(map[string]string{tt.key: tt.value})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate(%q=%q) = %v, want valid", tt.key, tt.value, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate(%.40q=%.40q) = %v, want an error containing %q", tt.key, tt.value, err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long: the input must be clipped", len(err.Error()))
			}
		})
	}
}

func TestValidateCount(t *testing.T) {
	set := map[string]string{}
	for i := range MaxLabels {
		set["k"+strconv.Itoa(i)] = "v"
	}
	if err := Validate(set); err != nil {
		t.Fatalf("%d labels: %v, want valid", MaxLabels, err)
	}
	set["one-more"] = "v"
	if err := Validate(set); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at most 32") {
		t.Fatalf("%d labels: %v, want an error naming the limit of 32", len(set), err)
	}
}

func TestParseChanges(t *testing.T) {
	tests := []struct {
		args       []string
		wantSet    map[string]string
		wantRemove []string
		wantErr    string
	}{
		{args: []string{"dc=sh1", "rack-", "tier="}, wantSet: map[string]string{"dc": "sh1", "tier": ""}, wantRemove: []string{"rack"}},
		{args: []string{"dc"}, wantErr: "want key=value"},
		{args: []string{"dc=sh1", "dc-"}, wantErr: "both set and removed"},
		{args: []string{"-"}, wantErr: "the name after any prefix"},
		{args: []string{"group=prod"}, wantErr: "reserved"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			set, remove, err := ParseChanges(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseChanges = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(set, tt.wantSet) || strings.Join(remove, ",") != strings.Join(tt.wantRemove, ",") {
				t.Errorf("ParseChanges = %v, %v; want %v, %v", set, remove, tt.wantSet, tt.wantRemove)
			}
		})
	}
}

func TestApply(t *testing.T) {
	got, err := Apply(map[string]string{"dc": "sh1", "rack": "r1"}, map[string]string{"rack": "r2", "tier": "db"}, []string{"dc", "absent"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"rack": "r2", "tier": "db"}; !maps.Equal(got, want) {
		t.Errorf("Apply = %v, want %v", got, want)
	}
	full := map[string]string{}
	for i := range MaxLabels {
		full["k"+strconv.Itoa(i)] = "v"
	}
	if _, err := Apply(full, map[string]string{"extra": "v"}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply past %d labels = %v, want ErrInvalid", MaxLabels, err)
	}
}

func TestAllowed(t *testing.T) {
	allow := []string{"rack=*", "dc=sh1", "tier=web-?"}
	if err := ValidatePatterns(allow); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key, value string
		want       bool
	}{
		{"rack", "r12", true},
		{"rack", "", true},
		{"dc", "sh1", true},
		{"dc", "sh2", false},
		{"dc", "sh1x", false},
		{"tier", "web-1", true},
		{"tier", "web-10", false},
		{"role", "db", false},
		{"Rack", "r12", false}, // keys are exact
		{"racks", "r12", false},
	}
	for _, tt := range tests {
		if got := Allowed(allow, tt.key, tt.value); got != tt.want {
			t.Errorf("Allowed(%v, %s=%s) = %v, want %v", allow, tt.key, tt.value, got, tt.want)
		}
	}
	if Allowed(nil, "rack", "r1") {
		t.Error("an empty allow-list allowed a label")
	}
}

func TestValidatePatterns(t *testing.T) {
	for _, bad := range []string{"rack", "rack=[a-z]", "group=*", "rack=a b", "-x=*"} {
		if err := ValidatePatterns([]string{bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidatePatterns(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	many := make([]string, MaxPatterns+1)
	for i := range many {
		many[i] = "k" + strconv.Itoa(i) + "=*"
	}
	if err := ValidatePatterns(many); !errors.Is(err, ErrInvalid) {
		t.Errorf("%d patterns: %v, want ErrInvalid", len(many), err)
	}
}

func TestGrant(t *testing.T) {
	allow := []string{"rack=*", "dc=sh1"}
	got, err := Grant(map[string]string{"rack": "r7", "dc": "sh1", "role": "web"}, map[string]string{"role": "db"}, allow)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"rack": "r7", "dc": "sh1", "role": "db"}; !maps.Equal(got, want) {
		t.Errorf("Grant = %v, want %v (the token's role overrides the node's)", got, want)
	}

	_, err = Grant(map[string]string{"rack": "r7", "role": "db"}, nil, allow)
	if !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Grant of role=db = %v, want ErrNotAllowed", err)
	}
	for _, want := range []string{"role=db", "rack=*, dc=sh1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := Grant(map[string]string{"role": "db"}, nil, nil); err == nil || !strings.Contains(err.Error(), "allows nothing") {
		t.Errorf("Grant with no allow-list = %v, want an error saying the token allows nothing", err)
	}
	if _, err := Grant(map[string]string{"k": strings.Repeat("v", 1000)}, nil, []string{"k=*"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Grant of an oversized value = %v, want ErrInvalid", err)
	}
}
