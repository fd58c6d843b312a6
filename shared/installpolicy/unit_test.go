package installpolicy

import (
	"strings"
	"testing"
)

func TestServiceUnit(t *testing.T) {
	for _, tc := range []struct {
		name, want, problem string
	}{
		{name: "myapp", want: "myapp.service"},
		{name: "myapp.service", want: "myapp.service"},
		{name: "nginx.socket", want: "nginx.socket"},
		{name: "getty@tty1.service", want: "getty@tty1.service"},
		{name: "web@blue", want: "web@blue.service"},
		{name: "app-v2_x:1", want: "app-v2_x:1.service"},
		{name: "", problem: "empty"},
		{name: "--now", problem: "starts with '-'"},
		{name: "-x.service", problem: "starts with '-'"},
		{name: "../etc/passwd", problem: "is a path"},
		{name: "/etc/systemd/system/a.service", problem: "is a path"},
		{name: "a;reboot", problem: "cannot hold"},
		{name: "a b", problem: "cannot hold"},
		{name: "$(id)", problem: "cannot hold"},
		{name: "a`id`", problem: "cannot hold"},
		{name: "a*", problem: "cannot hold"},
		{name: `a\x2db`, problem: "cannot hold"},
		{name: "a\nb", problem: "cannot hold"},
		{name: "a|b", problem: "cannot hold"},
		{name: "my.app", problem: "type a service step does not act on"},
		{name: "disk.mount", problem: "type a service step does not act on"},
		{name: ".service", problem: "no name before"},
		{name: "getty@.service", problem: "template without an instance"},
		{name: "a@b@c.service", problem: "more than one '@'"},
		{name: "ferry-agent", problem: "ferry-agent itself"},
		{name: strings.Repeat("a", 256), problem: "more than systemd's 255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, r := ServiceUnit(tc.name)
			switch {
			case tc.problem == "" && r != nil:
				t.Fatalf("refused: %v", r)
			case tc.problem == "" && got != tc.want:
				t.Fatalf("= %q, want %q", got, tc.want)
			case tc.problem != "" && r == nil:
				t.Fatalf("accepted as %q, want a refusal saying %q", got, tc.problem)
			case tc.problem != "" && (!strings.Contains(r.Problem, tc.problem) || r.Fix == ""):
				t.Fatalf("refusal %q, want it to say %q and give a fix", r, tc.problem)
			}
		})
	}
}
