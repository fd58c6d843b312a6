package sudoers

import (
	"fmt"
	"sort"
	"testing"
)

// settingCases are Defaults entries with Ferry's verdict, checked with the
// other cases (cases_test.go): each kind of setting in each form, and
// values of each syntax.
var settingCases = []checkCase{
	{text: "Defaults env_reset"},
	{text: "Defaults !env_reset"},
	{text: "Defaults !!env_reset"},
	{text: "Defaults env_reset=1", want: "takes no value"},
	{text: "Defaults env_reset+=x", want: "takes no value"},
	{text: "Defaults bogus_option_xyz", want: `unknown Defaults setting "bogus_option_xyz"`},
	{text: "Defaults no_such_setting_ferry", want: "visudo refuses it"},
	{text: "Defaults env_reset1", want: "expected ','"},

	{text: "Defaults secure_path=/usr/sbin:/usr/bin"},
	{text: `Defaults secure_path="/usr/sbin:/usr/bin"`},
	{text: "Defaults !secure_path"},
	{text: "Defaults secure_path", want: "needs a value"},
	{text: "Defaults secure_path+=/x", want: "only lists take += and -="},
	{text: "Defaults passwd_tries=3"},
	{text: `Defaults passwd_tries=" 3"`},
	{text: "Defaults !passwd_tries", want: "cannot be negated"},
	{text: "Defaults passwd_tries=three", want: "whole number"},
	{text: "Defaults passwd_tries=-1", want: "0 or more"},
	{text: "Defaults passwd_tries=99999999999", want: "0 or more"},
	{text: "Defaults !!timestamp_timeout=5"},
	{text: "Defaults !timestamp_timeout=5", want: "takes no value"},

	{text: "Defaults env_keep=A"},
	{text: `Defaults env_keep="A B"`},
	{text: "Defaults env_keep+=A"},
	{text: "Defaults env_keep -= A"},
	{text: "Defaults !env_keep"},
	{text: "Defaults env_keep", want: "needs a value"},

	{text: "Defaults lecture"},
	{text: "Defaults !lecture"},
	{text: "Defaults lecture=once"},
	{text: "Defaults lecture=sometimes", want: "one of never, once, always"},
	{text: "Defaults lecture=ONCE", want: "one of never, once, always"},
	{text: "Defaults timestamp_type", want: "needs a value"},
	{text: "Defaults !timestamp_type"},
	{text: "Defaults timestamp_type=kernel"},
	{text: "Defaults log_format=json"},
	{text: "Defaults log_format=json_pretty", since: "1.9.16"},

	{text: "Defaults syslog"},
	{text: "Defaults !syslog"},
	{text: "Defaults syslog=local7"},
	{text: "Defaults syslog=AUTH", want: "syslog facility"},
	{text: "Defaults syslog_goodpri", want: "needs a value"},
	{text: "Defaults syslog_goodpri=none"},
	{text: "Defaults syslog_badpri=loud", want: "syslog priority"},

	{text: "Defaults umask=0022"},
	{text: "Defaults umask=+7"},
	{text: "Defaults umask=0777"},
	{text: "Defaults umask=0800", want: "octal mode"},
	{text: "Defaults umask=1777", want: "octal mode"},
	{text: "Defaults umask=-1", want: "octal mode"},
	{text: "Defaults timestamp_timeout=2.5"},
	{text: "Defaults timestamp_timeout=-1"},
	{text: "Defaults timestamp_timeout=.5"},
	{text: "Defaults timestamp_timeout=5m", want: "minutes"},
	{text: "Defaults timestamp_timeout=1e3", want: "minutes"},
	{text: "Defaults command_timeout=1h30m"},
	{text: "Defaults command_timeout=1H"},
	{text: "Defaults command_timeout=90"},
	{text: "Defaults command_timeout=1s2"},
	{text: "Defaults command_timeout=1m1h", want: "in the order d, h, m, s"},
	{text: "Defaults command_timeout=1.5", want: "duration"},
	{text: "Defaults command_timeout=-5", want: "duration"},
	{text: "Defaults rlimit_core=infinity", since: "1.9.9"},
	{text: "Defaults rlimit_core=default", since: "1.9.9"},
	{text: `Defaults rlimit_core="5,infinity"`, since: "1.9.9"},
	{text: "Defaults rlimit_core=5,10", want: "must be in double quotes", since: "1.9.9"},
	{text: "Defaults rlimit_core=x", want: "a limit", since: "1.9.9"},
	{text: `Defaults rlimit_core="5,"`, want: "a limit", since: "1.9.9"},
	{text: `Defaults rlimit_core="x,5"`, want: "a limit", since: "1.9.9"},
	{text: "Defaults runcwd=*", since: "1.9.3"},
	{text: "Defaults runcwd=~", since: "1.9.3"},
	{text: "Defaults runchroot=/srv", since: "1.9.3"},
	{text: "Defaults runcwd=srv", want: "start with / or ~", since: "1.9.3"},
	{text: "Defaults admin_flag=*x", want: "start with / or ~", since: "1.9.6"},
	{text: "Defaults editor=/usr/bin/vi:/usr/bin/nano"},
	{text: "Defaults editor=vi", want: "absolute path"},
	{text: "Defaults env_file=relative", want: "absolute path"},
	{text: "Defaults closefrom=-1"},
	{text: "Defaults closefrom=2147483648", want: "whole number"},
	{text: "Defaults loglinelen=4294967295"},
	{text: "Defaults loglinelen=4294967296", want: "0 or more"},
	{text: "Defaults loglinelen=0x10", want: "0 or more"},
	{text: "Defaults cmddenial_message=denied", since: "1.9.16"},
	{text: "Defaults pam_silent", since: "1.9.16"},

	{text: `Defaults passprompt=""`, want: "empty string"},
	{text: `Defaults passprompt="a, b"`},
	{text: `Defaults passprompt=a\,b`},
	{text: `Defaults passprompt=a!b`},
	{text: `Defaults passprompt=!a`, want: "cannot start with '!'"},
	{text: `Defaults passprompt=a=b`, want: "must be escaped"},
	{text: `Defaults passprompt=x"y"`, want: "must be escaped"},
	{text: "Defaults iolog_dir=/var/log/sudo-io/%{user}"},
}

// goodValues and badValues are a value of each syntax that sudo accepts
// and one it refuses.
var (
	goodValues = map[valueSyntax]string{
		anyValue: "x", pathValue: "/x", dirValue: "/x", intValue: "5", uintValue: "5",
		modeValue: "022", minutesValue: "1.5", durationValue: "1h30m", rlimitValue: "infinity",
		facilityValue: "auth", priorityValue: "notice",
	}
	badValues = map[valueSyntax]string{
		pathValue: "x", dirValue: "x", intValue: "x", uintValue: "-1", modeValue: "0800",
		minutesValue: "5m", durationValue: "1.5", rlimitValue: "x", oneOfValue: "bogus",
		facilityValue: "bogus", priorityValue: "bogus",
	}
)

// TestSettingTableAgreesWithVisudo sets every setting in the table in each
// form and checks that Ferry and visudo agree on all of them, so the table
// says what sudo says.
func TestSettingTableAgreesWithVisudo(t *testing.T) {
	v := newOracle(t)
	names := make([]string, 0, len(settings))
	for n := range settings {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := settings[n]
		good := goodValues[s.syntax]
		switch {
		case s.syntax == oneOfValue:
			good = s.values[0]
		case n == "sudoers_locale":
			good = "C" // visudo applies the locale, which must exist
		case s.kind != valueSetting:
			good = "x"
		}
		forms := []string{n, "!" + n, n + "=" + good, n + "+=x"}
		if bad, ok := badValues[s.syntax]; ok && s.kind == valueSetting {
			forms = append(forms, n+"="+bad)
		}
		t.Run(n, func(t *testing.T) {
			if !v.knows(s.since) {
				t.Skipf("sudo %d.%d.%d predates %s, which added %s", v.version[0], v.version[1], v.version[2], s.since, n)
			}
			for _, f := range forms {
				text := fmt.Sprintf("Defaults %s", f)
				err := Check(text)
				if out, ok := v.check(t, text); ok != (err == nil) {
					t.Errorf("%q: visudo accepts=%v (%s), Ferry: %v", text, ok, out, err)
				}
			}
		})
	}
}
