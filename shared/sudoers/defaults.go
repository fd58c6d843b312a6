package sudoers

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The settings a Defaults line can change, and how each is set. This is
// the list sudo 1.9 knows (sudoers(5), "SUDOERS OPTIONS"; the names and
// types match plugins/sudoers/def_data.in of sudo 1.9.16p2). A setting
// added after 1.9.0 carries the release that added it: a node with an
// older sudo refuses it, and visudo on that node says so.

type settingKind int

const (
	// flagSetting is on or off: "Defaults name" or "Defaults !name".
	flagSetting settingKind = iota + 1
	// valueSetting takes "name=value"; "!name" only when negatable,
	// "name" alone only when bare.
	valueSetting
	// listSetting takes "name=value", "name+=value" and "name-=value",
	// and "!name" empties it.
	listSetting
)

// valueSyntax is what sudo accepts as the value of a valueSetting.
type valueSyntax int

const (
	anyValue      valueSyntax = iota + 1 // a string
	pathValue                            // an absolute path
	dirValue                             // an absolute path, a path starting with ~, or *
	intValue                             // a decimal int
	uintValue                            // a decimal unsigned int
	modeValue                            // an octal mode up to 0777
	minutesValue                         // minutes, with a fraction: 5, 2.5, -1
	durationValue                        // seconds, or with units in the order d h m s: 90, 1h30m
	rlimitValue                          // a resource limit: N, N,M, infinity, user, default
	oneOfValue                           // one of values
	facilityValue                        // a syslog facility
	priorityValue                        // a syslog priority
)

type setting struct {
	kind      settingKind
	syntax    valueSyntax // valueSetting only
	negatable bool        // valueSetting: "!name" resets it
	bare      bool        // valueSetting: "name" alone sets its "on" value
	values    []string    // oneOfValue: the values sudo knows
	since     string      // the sudo release that added it, when after 1.9.0
}

var settings = map[string]setting{
	"admin_flag":                {kind: valueSetting, syntax: dirValue, negatable: true, since: "1.9.6"},
	"always_query_group_plugin": {kind: flagSetting},
	"always_set_home":           {kind: flagSetting},
	"apparmor_profile":          {kind: valueSetting, syntax: anyValue, since: "1.9.11"},
	"authenticate":              {kind: flagSetting},
	"authfail_message":          {kind: valueSetting, syntax: anyValue},
	"badpass_message":           {kind: valueSetting, syntax: anyValue},
	"case_insensitive_group":    {kind: flagSetting},
	"case_insensitive_user":     {kind: flagSetting},
	"closefrom":                 {kind: valueSetting, syntax: intValue},
	"closefrom_override":        {kind: flagSetting},
	"cmddenial_message":         {kind: valueSetting, syntax: anyValue, since: "1.9.16"},
	"command_timeout":           {kind: valueSetting, syntax: durationValue, negatable: true},
	"compress_io":               {kind: flagSetting},
	"editor":                    {kind: valueSetting, syntax: pathValue},
	"env_check":                 {kind: listSetting},
	"env_delete":                {kind: listSetting},
	"env_editor":                {kind: flagSetting},
	"env_file":                  {kind: valueSetting, syntax: pathValue, negatable: true},
	"env_keep":                  {kind: listSetting},
	"env_reset":                 {kind: flagSetting},
	"exec_background":           {kind: flagSetting},
	"exempt_group":              {kind: valueSetting, syntax: anyValue, negatable: true},
	"fast_glob":                 {kind: flagSetting},
	"fdexec":                    {kind: valueSetting, syntax: oneOfValue, negatable: true, bare: true, values: []string{"never", "digest_only", "always"}},
	"fqdn":                      {kind: flagSetting},
	"group_plugin":              {kind: valueSetting, syntax: anyValue},
	"ignore_audit_errors":       {kind: flagSetting},
	"ignore_dot":                {kind: flagSetting},
	"ignore_iolog_errors":       {kind: flagSetting},
	"ignore_local_sudoers":      {kind: flagSetting},
	"ignore_logfile_errors":     {kind: flagSetting},
	"ignore_unknown_defaults":   {kind: flagSetting},
	"insults":                   {kind: flagSetting},
	"intercept":                 {kind: flagSetting, since: "1.9.8"},
	"intercept_allow_setid":     {kind: flagSetting, since: "1.9.8"},
	"intercept_authenticate":    {kind: flagSetting, since: "1.9.8"},
	"intercept_type":            {kind: valueSetting, syntax: oneOfValue, negatable: true, values: []string{"dso", "trace"}, since: "1.9.11"},
	"intercept_verify":          {kind: flagSetting, since: "1.9.12"},
	"iolog_dir":                 {kind: valueSetting, syntax: pathValue},
	"iolog_file":                {kind: valueSetting, syntax: anyValue},
	"iolog_flush":               {kind: flagSetting},
	"iolog_group":               {kind: valueSetting, syntax: anyValue, negatable: true},
	"iolog_mode":                {kind: valueSetting, syntax: modeValue},
	"iolog_user":                {kind: valueSetting, syntax: anyValue, negatable: true},
	"lecture":                   {kind: valueSetting, syntax: oneOfValue, negatable: true, bare: true, values: []string{"never", "once", "always"}},
	"lecture_file":              {kind: valueSetting, syntax: pathValue, negatable: true},
	"lecture_status_dir":        {kind: valueSetting, syntax: pathValue},
	"limitprivs":                {kind: valueSetting, syntax: anyValue},
	"listpw":                    {kind: valueSetting, syntax: oneOfValue, negatable: true, bare: true, values: []string{"never", "any", "all", "always"}},
	"log_allowed":               {kind: flagSetting},
	"log_denied":                {kind: flagSetting},
	"log_exit_status":           {kind: flagSetting, since: "1.9.8"},
	"log_format":                {kind: valueSetting, syntax: oneOfValue, negatable: true, values: []string{"sudo", "json", "json_compact", "json_pretty"}, since: "1.9.4"}, // json_compact and json_pretty since 1.9.16
	"log_host":                  {kind: flagSetting},
	"log_input":                 {kind: flagSetting},
	"log_output":                {kind: flagSetting},
	"log_passwords":             {kind: flagSetting, since: "1.9.10"},
	"log_server_cabundle":       {kind: valueSetting, syntax: pathValue, negatable: true},
	"log_server_keepalive":      {kind: flagSetting},
	"log_server_peer_cert":      {kind: valueSetting, syntax: pathValue, negatable: true},
	"log_server_peer_key":       {kind: valueSetting, syntax: pathValue, negatable: true},
	"log_server_timeout":        {kind: valueSetting, syntax: durationValue, negatable: true},
	"log_server_verify":         {kind: flagSetting},
	"log_servers":               {kind: listSetting},
	"log_stderr":                {kind: flagSetting, since: "1.9.12"},
	"log_stdin":                 {kind: flagSetting, since: "1.9.12"},
	"log_stdout":                {kind: flagSetting, since: "1.9.12"},
	"log_subcmds":               {kind: flagSetting, since: "1.9.8"},
	"log_ttyin":                 {kind: flagSetting, since: "1.9.12"},
	"log_ttyout":                {kind: flagSetting, since: "1.9.12"},
	"log_year":                  {kind: flagSetting},
	"logfile":                   {kind: valueSetting, syntax: pathValue, negatable: true},
	"loglinelen":                {kind: valueSetting, syntax: uintValue, negatable: true},
	"long_otp_prompt":           {kind: flagSetting},
	"mail_all_cmnds":            {kind: flagSetting},
	"mail_always":               {kind: flagSetting},
	"mail_badpass":              {kind: flagSetting},
	"mail_no_host":              {kind: flagSetting},
	"mail_no_perms":             {kind: flagSetting},
	"mail_no_user":              {kind: flagSetting},
	"mailerflags":               {kind: valueSetting, syntax: anyValue, negatable: true},
	"mailerpath":                {kind: valueSetting, syntax: pathValue, negatable: true},
	"mailfrom":                  {kind: valueSetting, syntax: anyValue, negatable: true},
	"mailsub":                   {kind: valueSetting, syntax: anyValue},
	"mailto":                    {kind: valueSetting, syntax: anyValue, negatable: true},
	"match_group_by_gid":        {kind: flagSetting},
	"maxseq":                    {kind: valueSetting, syntax: anyValue},
	"netgroup_tuple":            {kind: flagSetting},
	"noexec":                    {kind: flagSetting},
	"noninteractive_auth":       {kind: flagSetting, since: "1.9.10"},
	"pam_acct_mgmt":             {kind: flagSetting},
	"pam_askpass_service":       {kind: valueSetting, syntax: anyValue, since: "1.9.9"},
	"pam_login_service":         {kind: valueSetting, syntax: anyValue},
	"pam_rhost":                 {kind: flagSetting},
	"pam_ruser":                 {kind: flagSetting},
	"pam_service":               {kind: valueSetting, syntax: anyValue},
	"pam_session":               {kind: flagSetting},
	"pam_setcred":               {kind: flagSetting},
	"pam_silent":                {kind: flagSetting, since: "1.9.16"},
	"passprompt":                {kind: valueSetting, syntax: anyValue},
	"passprompt_override":       {kind: flagSetting},
	"passprompt_regex":          {kind: listSetting, since: "1.9.10"},
	"passwd_timeout":            {kind: valueSetting, syntax: minutesValue, negatable: true},
	"passwd_tries":              {kind: valueSetting, syntax: uintValue},
	"path_info":                 {kind: flagSetting},
	"preserve_groups":           {kind: flagSetting},
	"privs":                     {kind: valueSetting, syntax: anyValue},
	"pwfeedback":                {kind: flagSetting},
	"requiretty":                {kind: flagSetting},
	"restricted_env_file":       {kind: valueSetting, syntax: pathValue, negatable: true},
	"rlimit_as":                 {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_core":               {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_cpu":                {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_data":               {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_fsize":              {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_locks":              {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_memlock":            {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_nofile":             {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_nproc":              {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_rss":                {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"rlimit_stack":              {kind: valueSetting, syntax: rlimitValue, negatable: true, since: "1.9.9"},
	"role":                      {kind: valueSetting, syntax: anyValue},
	"root_sudo":                 {kind: flagSetting},
	"rootpw":                    {kind: flagSetting},
	"runas_allow_unknown_id":    {kind: flagSetting},
	"runas_check_shell":         {kind: flagSetting},
	"runas_default":             {kind: valueSetting, syntax: anyValue},
	"runaspw":                   {kind: flagSetting},
	"runchroot":                 {kind: valueSetting, syntax: dirValue, negatable: true, since: "1.9.3"},
	"runcwd":                    {kind: valueSetting, syntax: dirValue, negatable: true, since: "1.9.3"},
	"secure_path":               {kind: valueSetting, syntax: anyValue, negatable: true},
	"selinux":                   {kind: flagSetting, since: "1.9.5"},
	"set_home":                  {kind: flagSetting},
	"set_logname":               {kind: flagSetting},
	"set_utmp":                  {kind: flagSetting},
	"setenv":                    {kind: flagSetting},
	"shell_noargs":              {kind: flagSetting},
	"stay_setuid":               {kind: flagSetting},
	"sudoedit_checkdir":         {kind: flagSetting},
	"sudoedit_follow":           {kind: flagSetting},
	"sudoers_locale":            {kind: valueSetting, syntax: anyValue},
	"syslog":                    {kind: valueSetting, syntax: facilityValue, negatable: true, bare: true},
	"syslog_badpri":             {kind: valueSetting, syntax: priorityValue, negatable: true},
	"syslog_goodpri":            {kind: valueSetting, syntax: priorityValue, negatable: true},
	"syslog_maxlen":             {kind: valueSetting, syntax: uintValue},
	"syslog_pid":                {kind: flagSetting},
	"targetpw":                  {kind: flagSetting},
	"timestamp_timeout":         {kind: valueSetting, syntax: minutesValue, negatable: true},
	"timestamp_type":            {kind: valueSetting, syntax: oneOfValue, negatable: true, values: []string{"global", "ppid", "tty", "kernel"}},
	"timestampdir":              {kind: valueSetting, syntax: pathValue},
	"timestampowner":            {kind: valueSetting, syntax: anyValue},
	"tty_tickets":               {kind: flagSetting},
	"type":                      {kind: valueSetting, syntax: anyValue},
	"umask":                     {kind: valueSetting, syntax: modeValue, negatable: true},
	"umask_override":            {kind: flagSetting},
	"use_loginclass":            {kind: flagSetting},
	"use_netgroups":             {kind: flagSetting},
	"use_pty":                   {kind: flagSetting},
	"user_command_timeouts":     {kind: flagSetting},
	"utmp_runas":                {kind: flagSetting},
	"verifypw":                  {kind: valueSetting, syntax: oneOfValue, negatable: true, bare: true, values: []string{"never", "all", "any", "always"}},
	"visiblepw":                 {kind: flagSetting},
}

var (
	syslogFacilities = []string{"authpriv", "auth", "daemon", "user",
		"local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"}
	syslogPriorities = []string{"alert", "crit", "debug", "emerg", "err", "info", "notice", "warning", "none"}
)

// checkSetting checks one Defaults entry: its name, whether it may stand
// alone or negated, its operator and its value. neg is true for "!name",
// op is "", "=", "+=" or "-=", val is the value with quotes removed.
func checkSetting(name string, neg bool, op, val string) error {
	s, ok := settings[name]
	if !ok {
		return fmt.Errorf("unknown Defaults setting %q: sudo 1.9 has no such setting and visudo refuses it; check the name in sudoers(5)", name)
	}
	switch {
	case neg && s.kind == valueSetting && !s.negatable:
		return fmt.Errorf("Defaults !%s: %s cannot be negated; set it with %s=value", name, name, name)
	case neg:
		return nil
	case op == "" && s.kind == flagSetting:
		return nil
	case op == "" && s.bare:
		return nil
	case op == "":
		return fmt.Errorf("Defaults %s needs a value: %s=value", name, name)
	case s.kind == flagSetting:
		return fmt.Errorf("Defaults %s takes no value; write %s to turn it on or !%s to turn it off", name, name, name)
	case op != "=" && s.kind != listSetting:
		return fmt.Errorf("Defaults %s%s: only lists take += and -=; use %s=value", name, op, name)
	case s.kind == listSetting:
		return nil
	}
	if why := badValue(s, val); why != "" {
		return fmt.Errorf("Defaults %s=%s: %s", name, val, why)
	}
	return nil
}

// badValue says what is wrong with a value, or "" when sudo accepts it.
func badValue(s setting, v string) string {
	switch s.syntax {
	case pathValue:
		if !strings.HasPrefix(v, "/") {
			return "the value must be an absolute path starting with /"
		}
	case dirValue:
		if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "~") && v != "*" {
			return "the value must start with / or ~, or be *"
		}
	case intValue:
		if !validNumber(v, math.MinInt32, math.MaxInt32) {
			return "the value must be a whole number"
		}
	case uintValue:
		if !validNumber(v, 0, math.MaxUint32) {
			return "the value must be a whole number, 0 or more"
		}
	case modeValue:
		if !validMode(v) {
			return "the value must be an octal mode from 0 to 0777"
		}
	case minutesValue:
		if !validMinutes(v) {
			return "the value must be a number of minutes, such as 5, 2.5 or -1"
		}
	case durationValue:
		if !validDuration(v) {
			return "the value must be seconds, or a duration with units in the order d, h, m, s (such as 90 or 1h30m)"
		}
	case rlimitValue:
		if !validRlimit(v) {
			return "the value must be a limit (a number or infinity), soft,hard in quotes, user or default"
		}
	case oneOfValue:
		if !slices.Contains(s.values, v) {
			return "the value must be one of " + strings.Join(s.values, ", ")
		}
	case facilityValue:
		if !slices.Contains(syslogFacilities, v) {
			return "the value must be a syslog facility: " + strings.Join(syslogFacilities, ", ")
		}
	case priorityValue:
		if !slices.Contains(syslogPriorities, v) {
			return "the value must be a syslog priority: " + strings.Join(syslogPriorities, ", ")
		}
	}
	return ""
}

// validNumber accepts a decimal number in [lo, hi] the way sudo's
// strtonum reads it: leading blanks and a sign are allowed, nothing may
// follow the digits.
func validNumber(v string, lo, hi int64) bool {
	n, err := strconv.ParseInt(strings.TrimLeft(v, " \t\n\v\f\r"), 10, 64)
	return err == nil && n >= lo && n <= hi
}

// validMode accepts an octal mode up to 0777, as sudo's strtomode does.
func validMode(v string) bool {
	v = strings.TrimPrefix(strings.TrimLeft(v, " \t\n\v\f\r"), "+")
	n, err := strconv.ParseUint(v, 8, 32)
	return err == nil && n <= 0o777
}

// validMinutes accepts [+-]digits[.digits], the form of
// timestamp_timeout and passwd_timeout.
func validMinutes(v string) bool {
	if v != "" && (v[0] == '+' || v[0] == '-') {
		v = v[1:]
	}
	whole, frac, _ := strings.Cut(v, ".")
	for _, part := range []string{whole, frac} {
		for i := 0; i < len(part); i++ {
			if !isDigit(part[i]) {
				return false
			}
		}
	}
	n, err := strconv.ParseUint("0"+whole, 10, 63)
	return err == nil && n <= math.MaxInt64/60
}

// validDuration accepts what sudo's parse_timeout does: numbers with the
// units d, h, m, s in that order, a bare number last, at most MaxInt32
// seconds in all.
func validDuration(v string) bool {
	const units = "dhms"
	scale := map[byte]int64{'d': 86400, 'h': 3600, 'm': 60, 's': 1}
	next, total := 0, int64(0)
	for v != "" {
		j := 0
		if v[0] == '+' {
			j = 1
		}
		start := j
		for j < len(v) && isDigit(v[j]) {
			j++
		}
		if j == start {
			return false
		}
		n, err := strconv.ParseInt(v[start:j], 10, 64)
		if err != nil || n > math.MaxInt32 {
			return false
		}
		mult := int64(1)
		if j < len(v) {
			u := strings.IndexByte(units[next:], lower(v[j]))
			if u < 0 {
				return false
			}
			next += u
			mult = scale[units[next]]
			j++
		}
		total += n * mult
		if total > math.MaxInt32 {
			return false
		}
		v = v[j:]
	}
	return true
}

func lower(b byte) byte {
	if isUpper(b) {
		return b + 'a' - 'A'
	}
	return b
}

// validRlimit accepts "user", "default", a limit, or "soft,hard", each
// limit a number or infinity.
func validRlimit(v string) bool {
	if v == "user" || v == "default" {
		return true
	}
	soft, hard, found := strings.Cut(v, ",")
	if !found {
		hard = soft
	}
	return validLimit(soft) && validLimit(hard)
}

func validLimit(v string) bool {
	if v == "infinity" {
		return true
	}
	_, err := strconv.ParseUint(v, 10, 64)
	return err == nil && v != "" && isDigit(v[0])
}
