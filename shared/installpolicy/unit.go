package installpolicy

import (
	"fmt"
	"regexp"
	"strings"
)

// MaxUnitName is systemd's limit on a unit name's length.
const MaxUnitName = 255

// unitTypes are the unit types a service step may act on.
var unitTypes = []string{".service", ".socket", ".timer", ".path", ".target"}

// unitNameRE is the characters systemd allows in a unit name, less the
// backslash of its escapes: letters, digits and ":_.@-". Nothing in it is
// special to a shell, and it has no path separator.
var unitNameRE = regexp.MustCompile(`^[A-Za-z0-9:_.@-]+$`)

// ServiceUnit checks the unit a service step names and returns it with
// its type: "myapp" becomes "myapp.service". The agent runs systemctl
// with the unit as one argument after "--", never through a shell; the
// rules here make sure the name is a unit and nothing else: no option
// (a leading '-'), no path, no shell metacharacter, no glob, no template
// without an instance, and not the agent itself, whose restart would cut
// off the job that asked for it.
func ServiceUnit(name string) (string, *Refusal) {
	const fix = "name a systemd unit, e.g. unit: myapp.service (letters, digits and \":_.@-\")"
	switch {
	case name == "":
		return "", &Refusal{"the unit name is empty", fix}
	case len(name) > MaxUnitName:
		return "", &Refusal{fmt.Sprintf("the unit name is %d bytes, more than systemd's %d", len(name), MaxUnitName), fix}
	case strings.HasPrefix(name, "-"):
		return "", &Refusal{fmt.Sprintf("unit %q starts with '-', so systemctl would read it as an option", name), fix}
	case strings.ContainsAny(name, "/"):
		return "", &Refusal{fmt.Sprintf("unit %q is a path", name), "name the unit, not its file: e.g. unit: myapp.service for /etc/systemd/system/myapp.service"}
	case !unitNameRE.MatchString(name):
		return "", &Refusal{fmt.Sprintf("unit %q has a character systemd unit names cannot hold (a space, a shell metacharacter, a glob or a backslash escape)", name), fix}
	}
	unit := name
	if !hasUnitType(unit) {
		if strings.Contains(unit, ".") {
			return "", &Refusal{fmt.Sprintf("unit %q has a type a service step does not act on", name), "use a unit ending in " + strings.Join(unitTypes, ", ") + ", or no suffix for .service"}
		}
		unit += ".service"
	}
	base := strings.TrimSuffix(unit, unit[strings.LastIndexByte(unit, '.'):])
	switch {
	case base == "" || strings.HasPrefix(base, "."):
		return "", &Refusal{fmt.Sprintf("unit %q has no name before its type", name), fix}
	case strings.HasSuffix(base, "@"):
		return "", &Refusal{fmt.Sprintf("unit %q is a template without an instance", name), "name an instance, e.g. " + strings.TrimSuffix(base, "@") + "@main" + unit[len(base):]}
	case strings.Count(base, "@") > 1:
		return "", &Refusal{fmt.Sprintf("unit %q has more than one '@'", name), fix}
	case unit == "ferry-agent.service":
		return "", &Refusal{"a service step cannot restart ferry-agent itself: the restart would stop the job that runs it", "restart the agent outside a rollout (systemctl restart ferry-agent) once the rollout is done"}
	}
	return unit, nil
}

func hasUnitType(unit string) bool {
	for _, t := range unitTypes {
		if strings.HasSuffix(unit, t) {
			return true
		}
	}
	return false
}
