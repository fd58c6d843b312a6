package sudoers

import (
	"errors"
	"strings"
	"testing"
)

var valid = []struct{ name, text string }{
	{"empty", ""},
	{"comment", "# just a comment\n\n   # indented\n"},
	{"deploy nopasswd glob", "deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"},
	{"root all", "root ALL=(ALL:ALL) ALL"},
	{"group", "%admin ALL=(ALL) ALL"},
	{"group with colon runas group only", "%wheel ALL=(:wheel) NOPASSWD: ALL"},
	{"uid and gid", "#1000 ALL=(#0) /usr/bin/id\n%#1001 ALL=/bin/true"},
	{"netgroup", "+ops ALL=/usr/bin/uptime"},
	{"several users and hosts", "alice, bob web1, 10.0.0.0/8, !db1 = /usr/bin/systemctl restart myapp"},
	{"several commands", "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart myapp, /usr/bin/systemctl status myapp"},
	{"tags", "deploy ALL = NOPASSWD: SETENV: NOEXEC: /usr/bin/make, PASSWD: /bin/ls"},
	{"negated command", "ops ALL = ALL, !/usr/bin/su"},
	{"no args", `deploy ALL = /usr/bin/id ""`},
	{"escaped chars in args", `deploy ALL = /bin/echo a\,b\:c\=d`},
	{"multiple host sections", "deploy web = /bin/ls : db = /bin/cat"},
	{"aliases", strings.Join([]string{
		"User_Alias DEPLOYERS = alice, bob, %deploy",
		"Host_Alias WEB = web1, web2 : DB = db1",
		"Runas_Alias SVC = myapp, #998",
		"Cmnd_Alias RESTART = /usr/bin/systemctl restart myapp, /usr/bin/systemctl reload myapp",
		"Cmd_Alias STATUS = /usr/bin/systemctl status *",
		"DEPLOYERS WEB, DB = (SVC) NOPASSWD: RESTART, STATUS",
	}, "\n")},
	{"alias of alias", "User_Alias A = alice\nUser_Alias B = A, bob\nB ALL = ALL"},
	{"defaults", "Defaults env_reset\nDefaults !lecture, timestamp_timeout=5\nDefaults secure_path=\"/usr/sbin:/usr/bin\"\nDefaults env_keep += \"GOPATH GOROOT\""},
	{"defaults bindings", "Defaults:deploy !requiretty\nDefaults@web1 log_output\nDefaults>root !set_logname\nDefaults!/usr/bin/less noexec"},
	{"options", "deploy ALL = (root) TIMEOUT=10m CWD=/srv NOPASSWD: /usr/bin/make"},
	{"digest base64", "deploy ALL = sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU= /usr/bin/tool"},
	{"digest hex", "deploy ALL = sha224:d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f /usr/bin/tool"},
	{"equals in args", "deploy ALL = /bin/echo a=b"},
	{"paren in args", "deploy ALL = /bin/ls )"},
	{"sudoedit", "deploy ALL = sudoedit /etc/myapp/*.conf"},
	{"continuation", "deploy ALL = /bin/ls, \\\n    /bin/cat"},
	{"trailing comment", "deploy ALL = /bin/ls # list"},
	{"user with dot and dash", "svc.deploy-1 ALL = /bin/ls"},
	{"quoted user", `"domain user" ALL = /bin/ls`},
	{"directory command", "deploy ALL = /opt/myapp/bin/"},
}

var invalid = []struct{ name, text, want string }{
	{"include", "#include /etc/other", "include"},
	{"includedir", "#includedir /etc/sudoers.d", "include"},
	{"at include", "@include /etc/other", "include"},
	{"at includedir", "@includedir /etc/x", "include"},
	{"missing equals", "deploy ALL /bin/ls", "'='"},
	{"missing host", "deploy = /bin/ls", "host list"},
	{"relative command", "deploy ALL = ls", "full path"},
	{"unknown tag", "deploy ALL = NOPASWD: /bin/ls", "unknown tag"},
	{"unclosed runas", "deploy ALL = (root /bin/ls", "')'"},
	{"empty command", "deploy ALL = ", "command"},
	{"trailing comma", "deploy ALL = /bin/ls,", "command"},
	{"undefined alias", "DEPLOYERS ALL = /bin/ls", "not defined"},
	{"undefined cmnd alias", "deploy ALL = RESTART", "not defined"},
	{"alias wrong kind", "Host_Alias WEB = web1\nWEB ALL = /bin/ls", "User_Alias"},
	{"alias twice", "User_Alias A = a\nUser_Alias A = b", "twice"},
	{"alias cycle", "User_Alias A = B\nUser_Alias B = A\nA ALL = ALL", "itself"},
	{"alias named ALL", "User_Alias ALL = a", "reserved"},
	{"lower case alias", "User_Alias admins = a", "alias name"},
	{"short digest", "deploy ALL = sha256:dGVzdA== /usr/bin/tool", "digest"},
	{"digest without command", "deploy ALL = sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "command"},
	{"defaults command with args", "Defaults!/usr/bin/less -R noexec", "setting"},
	{"runas unclosed group", "deploy ALL = (root:wheel /bin/ls", "')'"},
	{"tag without command", "deploy ALL = NOPASSWD:", "command"},
	{"defaults no setting", "Defaults", "setting"},
	{"defaults bad binding", "Defaults~x env_reset", "after Defaults"},
	{"defaults negated value", "Defaults !timestamp_timeout=5", "no value"},
	{"defaults unterminated quote", "Defaults secure_path=\"/usr/bin", "quote"},
	{"nul", "deploy ALL = /bin/ls\x00", "NUL"},
	{"carriage return", "deploy ALL = /bin/ls\r\n", "carriage"},
	{"dangling continuation", "deploy ALL = /bin/ls \\", "continuation"},
	{"garbage after alias list", "User_Alias A = a b", "expected"},
	{"bad uid", "# 1000 ALL = ALL\n#x ALL=ALL\ndeploy ALL=(#) ALL", "numeric"},
	{"second line broken", "deploy ALL = /bin/ls\ndeploy ALL", "line 2"},
}

func TestCheck(t *testing.T) {
	for _, tc := range valid {
		t.Run("valid/"+tc.name, func(t *testing.T) { wantCheck(t, tc.text, "") })
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.name, func(t *testing.T) { wantCheck(t, tc.text, tc.want) })
	}
}

// wantCheck checks Check's verdict on text: nil when want is "", else an
// *Error with a line, whose message mentions want.
func wantCheck(t *testing.T, text, want string) {
	t.Helper()
	err := Check(text)
	if want == "" {
		if err != nil {
			t.Fatalf("Check(%q) = %v, want nil", text, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Check(%q) = nil, want an error containing %q", text, want)
	}
	var se *Error
	if !errors.As(err, &se) || se.Line < 1 {
		t.Errorf("error %v does not carry a line", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("Check(%q) = %v, want it to mention %q", text, err, want)
	}
}

// TestAgreesWithVisudo runs the same cases through visudo where it is
// installed, so the checker does not drift from sudo's own parser on the
// cases above. Cases where Ferry is deliberately stricter are skipped.
func TestAgreesWithVisudo(t *testing.T) {
	v := newOracle(t)
	stricter := map[string]bool{
		"include": true, "includedir": true, "at include": true, "at includedir": true,
		"undefined alias": true, "undefined cmnd alias": true, "carriage return": true,
		"alias wrong kind": true, "nul": true, "alias cycle": true,
	}
	for _, tc := range valid {
		t.Run("valid/"+tc.name, func(t *testing.T) {
			if out, ok := v.check(t, tc.text); !ok {
				t.Errorf("visudo refuses what Ferry accepts: %q: %v", tc.text, out)
			}
		})
	}
	for _, tc := range invalid {
		if stricter[tc.name] {
			continue
		}
		t.Run("invalid/"+tc.name, func(t *testing.T) {
			if _, ok := v.check(t, tc.text); ok {
				t.Errorf("visudo accepts what Ferry refuses: %q", tc.text)
			}
		})
	}
}

func FuzzSudoersCheck(f *testing.F) {
	for _, tc := range valid {
		f.Add(tc.text)
	}
	for _, tc := range invalid {
		f.Add(tc.text)
	}
	f.Fuzz(func(t *testing.T, text string) {
		err := Check(text)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %v is not a *Error", err)
			}
			if se.Line < 1 || se.Line > strings.Count(text, "\n")+1 {
				t.Fatalf("error line %d outside the text's %d lines", se.Line, strings.Count(text, "\n")+1)
			}
			return
		}
		// Whatever is accepted never pulls in another file.
		for _, l := range strings.Split(text, "\n") {
			l = strings.TrimLeft(l, " \t")
			if strings.HasPrefix(l, "@include") || hasWordPrefix(l, "#include") || hasWordPrefix(l, "#includedir") {
				t.Fatalf("accepted an include: %q", text)
			}
		}
		if strings.ContainsAny(text, "\x00\r") {
			t.Fatalf("accepted NUL or CR: %q", text)
		}
	})
}

func hasWordPrefix(s, w string) bool {
	if !strings.HasPrefix(s, w) {
		return false
	}
	return len(s) == len(w) || s[len(w)] == ' ' || s[len(w)] == '\t'
}
