// Package sudoers checks sudoers fragments before Ferry installs them, on
// the controller when a package is applied and on the agent before the
// fragment is written to /etc/sudoers.d.
//
// Check is Ferry's own parser. It reads the sudoers grammar the way sudo
// 1.9's lexer and parser do: user specifications (user, %group, #uid,
// %#gid, +netgroup, aliases, ALL, negation), host lists (names, IPv4 and
// IPv6 addresses and masks, netgroups), Runas specifications
// "(user:group)", options (TIMEOUT=, CWD=, NOTBEFORE=, ...), tags
// (NOPASSWD:, SETENV:, ...), commands (full paths with arguments,
// wildcards, digests, sudoedit, list, ALL, Cmnd_Alias), the four alias
// kinds, Defaults with their bindings checked against the settings sudo
// 1.9 knows (defaults.go), comments and line continuations. A refusal names
// the line and the fix.
//
// It is deliberately stricter than sudo where sudo's reading is surprising
// or depends on the node, because a broken fragment stops sudo for every
// rule on the host and a node may have no visudo to catch it: it refuses
// #include, #includedir, @include and @includedir (a fragment must not pull
// in other files), aliases used but not defined in the fragment, aliases
// defined twice or in a cycle, regular-expression commands, and line
// continuations that would join a line the reader takes for a separate
// one (see continues).
//
// CheckPolicy adds visudo where it is installed: on the fragment alone and
// on a staged copy of the node's whole policy with the fragment in place.
package sudoers

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Error is a refusal, with the 1-based line it is about.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("sudoers line %d: %s", e.Line, e.Msg) }

// headerPrefix starts the comment Ferry writes as the first line of every
// fragment it installs (renderSudoers in agent/internal/install). Check
// does not count that line, so the line numbers in its errors are those of
// the package's rules.
const headerPrefix = "# Managed by Ferry"

type aliasKind int

const (
	userAlias aliasKind = iota + 1
	hostAlias
	runasAlias
	cmndAlias
)

func (k aliasKind) String() string {
	switch k {
	case userAlias:
		return "User_Alias"
	case hostAlias:
		return "Host_Alias"
	case runasAlias:
		return "Runas_Alias"
	default:
		return "Cmnd_Alias"
	}
}

var aliasKeywords = map[string]aliasKind{
	"User_Alias":  userAlias,
	"Host_Alias":  hostAlias,
	"Runas_Alias": runasAlias,
	"Cmnd_Alias":  cmndAlias,
	"Cmd_Alias":   cmndAlias,
}

var tags = map[string]bool{
	"NOPASSWD": true, "PASSWD": true, "NOEXEC": true, "EXEC": true,
	"SETENV": true, "NOSETENV": true, "LOG_INPUT": true, "NOLOG_INPUT": true,
	"LOG_OUTPUT": true, "NOLOG_OUTPUT": true, "MAIL": true, "NOMAIL": true,
	"FOLLOW": true, "NOFOLLOW": true, "INTERCEPT": true, "NOINTERCEPT": true,
}

// options are the NAME=value settings a command spec may carry before its
// tags. They are also the words sudo reserves: no alias may take their
// names.
var options = map[string]bool{
	"ROLE": true, "TYPE": true, "APPARMOR_PROFILE": true, "PRIVS": true,
	"LIMITPRIVS": true, "NOTBEFORE": true, "NOTAFTER": true, "TIMEOUT": true,
	"CWD": true, "CHROOT": true,
}

// keywords are lower-case words sudo's lexer takes for something else
// than a user or host name.
var keywords = map[string]bool{
	"sudoedit": true, "sha224": true, "sha256": true, "sha384": true, "sha512": true,
}

type aliasDef struct {
	kind aliasKind
	line int
	refs []string
}

type ref struct {
	name string
	kind aliasKind
	line int
}

type checker struct {
	lineNo int
	defs   map[string]*aliasDef
	refs   []ref
	cur    *aliasDef // alias being defined, collects references for cycles
}

// Check parses a sudoers fragment and returns nil when it is valid. A first
// line starting with Ferry's header comment is not counted.
func Check(text string) error {
	lines := strings.Split(text, "\n")
	if len(lines) > 1 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1] // the newline that ends the last line
	}
	skip := 0
	if isHeader(lines[0]) {
		skip = 1
	}
	if i := strings.IndexByte(text, 0); i >= 0 {
		return &Error{Line: 1 + strings.Count(text[:i], "\n") - skip, Msg: "contains a NUL byte"}
	}
	if i := strings.IndexByte(text, '\r'); i >= 0 {
		return &Error{Line: 1 + strings.Count(text[:i], "\n") - skip, Msg: "contains a carriage return; use Unix line endings"}
	}
	c := &checker{defs: map[string]*aliasDef{}}
	for i := skip; i < len(lines); i++ {
		start := i + 1 - skip
		line := lines[i]
		for {
			more, err := continues(line)
			if err != nil {
				return &Error{Line: i + 1 - skip, Msg: err.Error()}
			}
			if !more {
				break
			}
			if i+1 >= len(lines) {
				return &Error{Line: i + 1 - skip, Msg: "the last line ends with a backslash, a line continuation into nothing; remove the backslash"}
			}
			i++
			if err := continuedLine(lines[i]); err != nil {
				return &Error{Line: i + 1 - skip, Msg: err.Error()}
			}
			line = line[:len(line)-1] + " " + lines[i]
		}
		c.lineNo = start
		if err := c.line(line); err != nil {
			return &Error{Line: start, Msg: err.Error()}
		}
	}
	return c.resolve()
}

// isHeader reports whether a first line is the comment Ferry writes.
func isHeader(line string) bool {
	return strings.HasPrefix(line, headerPrefix) && !strings.ContainsAny(line, "\x00\r") && !strings.HasSuffix(line, `\`)
}

// continues reports whether a line ends with a line continuation. It
// refuses the continuations sudo reads differently from how they look: a
// backslash followed by blanks (sudo continues some and escapes the blank
// in others) and a backslash on a line with a '#' (sudo does not continue
// a comment, so the next line would stand on its own).
func continues(line string) (bool, error) {
	trimmed := strings.TrimRight(line, " \t")
	if trimmed != line && endsWithEscape(trimmed) {
		return false, fmt.Errorf("blanks after the backslash at the end of the line; remove them for a line continuation, or the backslash")
	}
	if !endsWithEscape(line) {
		return false, nil
	}
	if strings.Contains(line, "#") {
		return false, fmt.Errorf("the line ends with a backslash (a line continuation) but has a '#': sudo ends a comment at the end of its line and would read the next line on its own; remove the backslash or the comment")
	}
	return true, nil
}

// continuedLine checks the line a continuation joins: it must be indented,
// so that a rule ending in a stray backslash does not swallow the rule
// after it, and it must not be blank, a comment or an include.
func continuedLine(line string) error {
	rest := strings.TrimLeft(line, " \t")
	switch {
	case rest == "":
		return fmt.Errorf("the line before ends with a backslash (a line continuation) but this line is blank; remove the backslash")
	case rest == line:
		return fmt.Errorf("the line before ends with a backslash (a line continuation), which joins this line to it; indent this line to continue, or remove the backslash if it is a line of its own")
	case rest[0] == '#' || rest[0] == '@':
		return fmt.Errorf("the line before ends with a backslash (a line continuation) but this line is a comment or an include; remove the backslash")
	}
	return nil
}

func endsWithEscape(s string) bool {
	n := 0
	for i := len(s) - 1; i >= 0 && s[i] == '\\'; i-- {
		n++
	}
	return n%2 == 1
}

func (c *checker) resolve() error {
	for _, r := range c.refs {
		d, ok := c.defs[r.name]
		if !ok {
			return &Error{Line: r.line, Msg: fmt.Sprintf("%s %s is used but not defined; define it in this fragment", r.kind, r.name)}
		}
		if d.kind != r.kind {
			return &Error{Line: r.line, Msg: fmt.Sprintf("%s is a %s (line %d) but is used where a %s belongs", r.name, d.kind, d.line, r.kind)}
		}
	}
	names := make([]string, 0, len(c.defs))
	for n := range c.defs {
		names = append(names, n)
	}
	sort.Strings(names)
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return &Error{Line: c.defs[n].line, Msg: fmt.Sprintf("alias %s refers to itself through other aliases", n)}
		case 2:
			return nil
		}
		state[n] = 1
		for _, r := range c.defs[n].refs {
			if _, ok := c.defs[r]; ok {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) line(line string) error {
	p := &parser{s: line, c: c}
	p.space()
	rest := p.s[p.i:]
	switch {
	case rest == "":
		return nil
	case strings.HasPrefix(rest, "#include"), strings.HasPrefix(rest, "@include"):
		return fmt.Errorf("include directives are refused: a fragment must not pull in other files")
	case p.comment():
		return nil
	case strings.HasPrefix(rest, "Defaults"):
		return p.defaults()
	}
	w := p.peekIdent()
	if k, ok := aliasKeywords[w]; ok {
		p.i += len(w)
		return p.alias(k)
	}
	return p.userSpec()
}

type parser struct {
	s string
	i int
	c *checker
}

func (p *parser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// atBlank reports whether the cursor is at the end of the line, at a
// blank or just after one.
func (p *parser) atBlank() bool {
	blank := func(b byte) bool { return b == ' ' || b == '\t' }
	return p.i >= len(p.s) || blank(p.s[p.i]) || p.i > 0 && blank(p.s[p.i-1])
}

// comment reports whether a comment starts at the cursor. As in sudo, '#'
// followed by a digit, or by '-' and a digit, is a numeric ID instead.
func (p *parser) comment() bool {
	if p.peek() != '#' {
		return false
	}
	next := p.s[p.i+1:]
	switch {
	case next != "" && isDigit(next[0]):
		return false
	case next == "-" || strings.HasPrefix(next, "-") && len(next) > 1 && isDigit(next[1]):
		return false
	}
	return true
}

// end reports whether only blanks and a comment remain.
func (p *parser) end() bool {
	p.space()
	return p.i >= len(p.s) || p.comment()
}

func (p *parser) peek() byte { return p.peekAt(p.i) }

// peekAt returns the byte at j, or 0 past the end of the line.
func (p *parser) peekAt(j int) byte {
	if j < len(p.s) {
		return p.s[j]
	}
	return 0
}

func (p *parser) expect(b byte, what string) error {
	p.space()
	if p.peek() != b {
		return p.errf("expected %s", what)
	}
	p.i++
	return nil
}

func (p *parser) errf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if p.i < len(p.s) {
		near := p.s[p.i:]
		if len(near) > 30 {
			near = near[:30] + "..."
		}
		return fmt.Errorf("%s at %q (column %d)", msg, near, p.i+1)
	}
	return fmt.Errorf("%s at the end of the line", msg)
}

// negations consumes '!'s (and blanks between them) before a member or a
// command.
func (p *parser) negations() {
	for p.peek() == '!' {
		p.i++
		p.space()
	}
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }
func isUpper(b byte) bool { return b >= 'A' && b <= 'Z' }
func isLower(b byte) bool { return b >= 'a' && b <= 'z' }

// peekIdent returns the run of letters, digits and underscores at the cursor.
func (p *parser) peekIdent() string {
	j := p.i
	for j < len(p.s) && (isUpper(p.s[j]) || isLower(p.s[j]) || isDigit(p.s[j]) || p.s[j] == '_') {
		j++
	}
	return p.s[p.i:j]
}

func isAliasName(w string) bool {
	if w == "" || !isUpper(w[0]) {
		return false
	}
	for i := 0; i < len(w); i++ {
		if !isUpper(w[i]) && !isDigit(w[i]) && w[i] != '_' {
			return false
		}
	}
	return true
}

// word scans a name: anything but blanks and the characters sudoers gives
// a meaning to, which a backslash escapes; or a double-quoted string.
func (p *parser) word() (string, error) {
	if p.peek() == '"' {
		return p.quoted()
	}
	start := p.i
	for p.i < len(p.s) {
		b := p.s[p.i]
		if b == '\\' {
			if p.i+1 >= len(p.s) || p.s[p.i+1] == '\t' {
				return "", p.errf("backslash escapes nothing")
			}
			p.i += 2
			continue
		}
		if b == ' ' || b == '\t' || strings.IndexByte("#>!=:,()\"", b) >= 0 {
			break
		}
		p.i++
	}
	if p.i == start {
		return "", p.errf("expected a name")
	}
	return p.s[start:p.i], nil
}

// quoted scans a double-quoted string and returns what is between the
// quotes. Inside, a backslash escapes only a quote, as in sudo.
func (p *parser) quoted() (string, error) {
	start := p.i
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		switch {
		case strings.HasPrefix(p.s[p.i:], `\"`):
			b.WriteByte('"')
			p.i += 2
			continue
		case p.s[p.i] == '"':
			p.i++
			if b.Len() == 0 {
				p.i = start
				return "", p.errf("empty string; write something between the quotes or drop them")
			}
			return b.String(), nil
		}
		b.WriteByte(p.s[p.i])
		p.i++
	}
	p.i = start
	return "", p.errf("unterminated double quote")
}

func (p *parser) addRef(name string, k aliasKind) {
	p.c.refs = append(p.c.refs, ref{name: name, kind: k, line: p.c.lineNo})
	if p.c.cur != nil {
		p.c.cur.refs = append(p.c.cur.refs, name)
	}
}

// member parses one item of a user, runas or host list.
func (p *parser) member(k aliasKind) error {
	p.space()
	p.negations()
	switch b := p.peek(); {
	case b == '#':
		p.i++
		return p.id("a numeric ID after #")
	case b == '%' && k == hostAlias:
		return p.errf("a %%group belongs in a user list; a host list takes host names, addresses and +netgroups")
	case b == '%':
		p.i++
		if p.peek() == ':' {
			p.i++
		}
		if p.peek() == '#' {
			p.i++
			return p.id("a numeric group ID after %#")
		}
		if strings.IndexByte(" \t\"\x00", p.peek()) >= 0 {
			return p.errf("empty group name after %%; to quote a group, quote it whole: \"%%group name\"")
		}
		_, err := p.word()
		return err
	case b == '+':
		p.i++
		if p.peek() == ' ' || p.peek() == '\t' || p.peek() == 0 {
			return p.errf("empty netgroup name after +")
		}
		_, err := p.word()
		return err
	case b == '/' || b == '^':
		return p.errf("a user or host name cannot start with %c (sudo reads a command there)", b)
	case b == '"':
		w, err := p.quoted()
		if err == nil && (w == "%" || w == "%:" || w == "+") {
			return fmt.Errorf("%q: empty group or netgroup name", w)
		}
		return err
	}
	if n := ipv6Len(p.s[p.i:]); n > 0 {
		addr := p.s[p.i : p.i+n]
		switch {
		case k != hostAlias:
			return p.errf("%s is an IPv6 address, which sudo reads as a host, not a user", addr)
		case !ipv6Valid(addr):
			return p.errf("invalid IPv6 address %s: '::' may appear only once", addr)
		}
		p.i += n
		return nil
	}
	w, err := p.word()
	if err != nil {
		return err
	}
	switch {
	case w == "ALL":
		return nil
	case isAliasName(w):
		p.addRef(w, k)
		return nil
	case keywords[w]:
		return fmt.Errorf("%s is a sudoers keyword, not a user or host name", w)
	case k == hostAlias:
		return checkHost(w, p)
	case ipv4Re.MatchString(w):
		return fmt.Errorf("%s is an address, which sudo reads as a host, not a user", w)
	}
	return nil
}

const (
	octet = `(1?[0-9]{1,2}|2[0-4][0-9]|25[0-5])`
	ipv4  = octet + `(\.` + octet + `){3}`
)

// ipv4Re matches a whole word sudo's lexer takes for an IPv4 address or
// network.
var ipv4Re = regexp.MustCompilePOSIX(`^` + ipv4 + `(/` + ipv4 + `|/([12]?[0-9]|3[0-2]))?$`)

// ipv6Re matches the IPv6 addresses and masks sudo's lexer knows (their
// colons would otherwise end a host name).
var ipv6Re = func() *regexp.Regexp {
	const (
		hex16 = `[0-9A-Fa-f]{1,4}`
		ipv6  = `((` + hex16 + `)?:){2,7}(` + hex16 + `)?|((` + hex16 + `)?:){2,6}:` + ipv4
	)
	return regexp.MustCompilePOSIX(`^(` + ipv6 + `)(/(` + ipv6 + `)|/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?`)
}()

// ipv6Len returns the length of the IPv6 address at the start of s, or 0.
func ipv6Len(s string) int {
	return len(ipv6Re.FindString(s))
}

// ipv6Valid reports whether "::" appears at most once in the address and
// at most once in the mask, as sudo's lexer checks.
func ipv6Valid(s string) bool {
	n := 0
	for i := 0; i < len(s); i++ {
		if strings.HasPrefix(s[i:], "::") {
			if n++; n > 1 {
				return false
			}
		}
		if s[i] == '/' {
			n = 0
		}
	}
	return true
}

func checkHost(w string, p *parser) error {
	if strings.Count(w, "/") > 1 {
		return p.errf("host %q is not a host name, address or address/mask", w)
	}
	return nil
}

// id parses the rest of a numeric ID, #-?[0-9]+.
func (p *parser) id(what string) error {
	if p.peek() == '-' {
		p.i++
	}
	start := p.i
	for p.i < len(p.s) && isDigit(p.s[p.i]) {
		p.i++
	}
	if p.i == start {
		return p.errf("expected %s", what)
	}
	return nil
}

// list parses members separated by commas.
func (p *parser) list(k aliasKind) error {
	for {
		if err := p.member(k); err != nil {
			return err
		}
		p.space()
		if p.peek() != ',' {
			return nil
		}
		p.i++
	}
}

func (p *parser) alias(k aliasKind) error {
	for {
		p.space()
		name := p.peekIdent()
		if !isAliasName(name) {
			return p.errf("expected an alias name (upper case letters, digits and _, starting with a letter)")
		}
		if name == "ALL" || options[name] {
			return p.errf("%s is reserved and cannot name an alias", name)
		}
		if _, dup := p.c.defs[name]; dup {
			return p.errf("alias %s is defined twice", name)
		}
		p.i += len(name)
		def := &aliasDef{kind: k, line: p.c.lineNo}
		p.c.defs[name] = def
		p.c.cur = def
		if err := p.expect('=', "'=' after the alias name"); err != nil {
			return err
		}
		var err error
		if k == cmndAlias {
			err = p.commands(false)
		} else {
			err = p.list(k)
		}
		p.c.cur = nil
		if err != nil {
			return err
		}
		if p.end() {
			return nil
		}
		if !p.separator() {
			return p.errf("expected ':' or the end of the line")
		}
	}
}

func (p *parser) defaults() error {
	p.i += len("Defaults")
	switch b := p.peek(); b {
	case '@', ':', '>', '!':
		p.i++
		p.space()
		if p.peek() == ':' {
			return p.errf("expected a name after Defaults%c", b)
		}
		var err error
		switch b {
		case '@':
			err = p.list(hostAlias)
		case '!':
			err = p.cmndList()
		default:
			err = p.list(userAlias)
		}
		if err != nil {
			return err
		}
		if !p.atBlank() {
			return p.errf("expected a blank between the Defaults%c list and the settings", b)
		}
	case ' ', '\t':
	case 0:
		return p.errf("Defaults needs at least one setting")
	default:
		return p.errf("expected a blank or one of @ : > ! after Defaults")
	}
	if p.end() {
		return p.errf("Defaults needs at least one setting")
	}
	for {
		if err := p.setting(); err != nil {
			return err
		}
		if p.end() {
			return nil
		}
		if p.peek() != ',' {
			return p.errf("expected ',' between Defaults settings")
		}
		p.i++
	}
}

// setting parses and checks one Defaults entry: [!]name, name=value,
// name+=value or name-=value.
func (p *parser) setting() error {
	p.space()
	bangs := 0
	for p.peek() == '!' {
		bangs++
		p.i++
	}
	p.space()
	neg := bangs%2 == 1 // "!!name" is name, as in sudo
	start := p.i
	for p.i < len(p.s) && (isLower(p.s[p.i]) || p.s[p.i] == '_') {
		p.i++
	}
	name := p.s[start:p.i]
	switch {
	case name == "" && isDigit(p.peek()):
		return p.errf("expected a Defaults setting name; a value with a comma (such as a soft,hard limit) must be in double quotes")
	case name == "":
		return p.errf("expected a Defaults setting name (lower case)")
	}
	p.space()
	op := ""
	switch {
	case strings.HasPrefix(p.s[p.i:], "+="), strings.HasPrefix(p.s[p.i:], "-="):
		op = p.s[p.i : p.i+2]
	case p.peek() == '=':
		op = "="
	}
	val := ""
	if op != "" {
		if neg {
			return p.errf("a negated setting (!%s) takes no value", name)
		}
		p.i += len(op)
		p.space()
		var err error
		if val, err = p.defaultsValue(); err != nil {
			return err
		}
	}
	return checkSetting(name, neg, op, val)
}

// defaultsValue scans a Defaults value, quoted or not, and returns it
// without quotes.
func (p *parser) defaultsValue() (string, error) {
	switch p.peek() {
	case '"':
		return p.quoted()
	case '!':
		return "", p.errf("a value cannot start with '!'; put it in double quotes")
	}
	start := p.i
	for p.i < len(p.s) {
		b := p.s[p.i]
		if b == '\\' && p.i+1 < len(p.s) {
			p.i += 2
			continue
		}
		if b == ',' || b == ' ' || b == '\t' || b == '#' {
			break
		}
		if b == '=' || b == '"' {
			return "", p.errf("%q inside a value must be escaped with a backslash, or the value put in double quotes", b)
		}
		p.i++
	}
	if p.i == start {
		return "", p.errf("expected a value")
	}
	return p.s[start:p.i], nil
}

// userSpec parses "User_List Host_List = Cmnd_Spec_List [: Host_List = ...]".
func (p *parser) userSpec() error {
	if err := p.list(userAlias); err != nil {
		return err
	}
	p.space()
	if p.peek() == '=' {
		return p.errf("expected a host list (for example ALL) before '='")
	}
	for {
		if err := p.list(hostAlias); err != nil {
			return err
		}
		if err := p.expect('=', "'=' after the host list"); err != nil {
			return err
		}
		if err := p.commands(true); err != nil {
			return err
		}
		if p.end() {
			return nil
		}
		if !p.separator() {
			return p.errf("expected ',', ':' or the end of the line")
		}
	}
}

// separator consumes a ':' between privileges, between alias
// definitions, or between Runas users and groups. Where an IPv6 address
// starts instead, as in ":::", sudo's lexer reads the address, so there is
// no separator.
func (p *parser) separator() bool {
	if p.peek() != ':' || ipv6Len(p.s[p.i:]) > 0 {
		return false
	}
	p.i++
	return true
}

// commands parses a Cmnd_Spec_List (spec) or a Cmnd_List (!spec).
func (p *parser) commands(spec bool) error {
	for {
		p.space()
		if spec {
			if err := p.specPrefix(); err != nil {
				return err
			}
		}
		if err := p.command(true); err != nil {
			return err
		}
		p.space()
		if p.peek() != ',' {
			return nil
		}
		p.i++
	}
}

// cmndList parses the commands a Defaults! line binds to: no arguments,
// the first blank not next to a comma ends the list.
func (p *parser) cmndList() error {
	for {
		if err := p.command(false); err != nil {
			return err
		}
		j := p.i
		p.space()
		if p.peek() != ',' {
			p.i = j
			return nil
		}
		p.i++
	}
}

// specPrefix parses the optional Runas_Spec, options and tags before a
// command, in that order.
func (p *parser) specPrefix() error {
	if p.peek() == '(' {
		if err := p.runas(); err != nil {
			return err
		}
	}
	tagged := false
	for {
		p.space()
		w := p.peekIdent()
		if !isAliasName(w) {
			return nil
		}
		j := p.skipBlanks(p.i + len(w))
		switch {
		case options[w] && p.peekAt(j) == '=':
			if tagged {
				return p.errf("%s= must come before the tags (such as NOPASSWD:)", w)
			}
			p.i = j + 1
			p.space()
			if err := p.option(w); err != nil {
				return err
			}
		case tags[w] && p.peekAt(j) == ':':
			p.i = j + 1
			tagged = true
		case w != "ALL" && p.peekAt(j) == ':' && strings.IndexByte("/\x00", p.peekAt(p.skipBlanks(j+1))) >= 0:
			// A word, ':' and a path is a misspelt tag; a word, ':' and
			// a host list is a Cmnd_Alias ending a privilege.
			return p.errf("unknown tag %s:; the tags are NOPASSWD, PASSWD, SETENV, NOSETENV, EXEC, NOEXEC, LOG_INPUT, LOG_OUTPUT, MAIL, FOLLOW, INTERCEPT and their NO forms", w)
		default:
			return nil // a Cmnd_Alias or ALL
		}
	}
}

// runas parses "(users)", "(users:groups)", "(:groups)", "(:)" or "()".
func (p *parser) runas() error {
	p.i++
	p.space()
	users := p.peek() != ':' && p.peek() != ')'
	if users {
		if err := p.list(runasAlias); err != nil {
			return err
		}
	}
	p.space()
	if p.separator() {
		p.space()
		if p.peek() != ')' {
			if err := p.list(runasAlias); err != nil {
				return err
			}
		} else if users {
			return p.errf("expected a group after ':' in the Runas specification; drop the ':' to run as the user's own group")
		}
	}
	return p.expect(')', "')' closing the Runas specification")
}

// option parses the value of a command option (TIMEOUT=, CWD=, ...).
func (p *parser) option(name string) error {
	start := p.i
	v, err := p.word()
	if err != nil {
		return err
	}
	bad := ""
	switch {
	case p.s[start] != '"' && (isAliasName(v) || keywords[v] || ipv4Re.MatchString(v) || ipv6Len(v) > 0):
		bad = "is a word sudo reads as something else (an alias, keyword or address); quote it"
	}
	switch name {
	case "TIMEOUT":
		if !validDuration(v) {
			bad = "must be seconds, or a duration with units in the order d, h, m, s (such as 90 or 1h30m)"
		}
	case "NOTBEFORE", "NOTAFTER":
		if !validGentime(v) {
			bad = "must be a time as YYYYMMDDHH[MM[SS]] with an optional Z or +hhmm zone, such as 20260101000000Z"
		}
	case "CWD", "CHROOT":
		if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "~") && v != "*" {
			bad = "must start with / or ~, or be *"
		}
	case "PRIVS", "LIMITPRIVS":
		bad = "is for Solaris privileges; sudo on Linux refuses it"
	case "APPARMOR_PROFILE":
		bad = "needs a sudo built with AppArmor (1.9.11 or later); sudo without it refuses the line, so Ferry does too"
	}
	if bad != "" {
		p.i = start
		return p.errf("%s=%s: the value %s", name, v, bad)
	}
	return nil
}

// validGentime accepts the generalized time sudo's parse_gentime does:
// 10 to 14 digits (even), an optional one-digit fraction, and an optional
// zone (Z, +hh, +hhmm, -hh, -hhmm).
func validGentime(v string) bool {
	n := 0
	for n < len(v) && isDigit(v[n]) {
		n++
	}
	if n < 10 || n > 14 || n%2 == 1 {
		return false
	}
	v = v[n:]
	if len(v) >= 2 && (v[0] == '.' || v[0] == ',') && isDigit(v[1]) {
		v = v[2:]
	}
	switch {
	case v == "" || v == "Z":
		return true
	case v[0] == '+' || v[0] == '-':
		tz := v[1:]
		for i := 0; i < len(tz); i++ {
			if !isDigit(tz[i]) {
				return false
			}
		}
		return len(tz) == 2 || len(tz) == 4
	}
	return false
}

// digestSizes are the digest lengths in bytes, by algorithm.
var digestSizes = map[string]int{"sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}

func isDigest(w string) bool { return digestSizes[w] != 0 }

// digestOK checks the length of a digest the way sudo's lexer does: hex
// when every character is a hex digit, base64 otherwise, padded or not.
func digestOK(alg, d string) bool {
	size := digestSizes[alg]
	hex := true
	for i := 0; i < len(d); i++ {
		b := lower(d[i])
		hex = hex && (isDigit(b) || b >= 'a' && b <= 'f')
	}
	switch {
	case hex:
		return len(d) == 2*size
	case strings.HasSuffix(d, "="):
		return len(d) == 4*((size+2)/3)
	}
	return len(d) == (4*size+2)/3
}

// digests parses "sha256:digest[, sha512:digest...]" before a command and
// reports whether there was one.
func (p *parser) digests() (bool, error) {
	afterComma := false
	for {
		w := p.peekIdent()
		j := p.skipBlanks(p.i + len(w))
		if !isDigest(w) || j >= len(p.s) || p.s[j] != ':' {
			if afterComma {
				return true, p.errf("expected another digest after ','; a digest applies to the command after it")
			}
			return false, nil
		}
		p.i = j + 1
		p.space()
		start := p.i
		for p.i < len(p.s) && (isDigit(p.s[p.i]) || isUpper(p.s[p.i]) || isLower(p.s[p.i]) || strings.IndexByte("+/=", p.s[p.i]) >= 0) {
			p.i++
		}
		if !digestOK(w, p.s[start:p.i]) {
			p.i = start
			return true, p.errf("expected a %s digest in hex or base64 after %s:", w, w)
		}
		p.space()
		if p.peek() != ',' {
			return true, nil
		}
		p.i++
		p.space()
		afterComma = true
	}
}

// skipBlanks returns the index of the first non-blank at or after j.
func (p *parser) skipBlanks(j int) int {
	for j < len(p.s) && (p.s[j] == ' ' || p.s[j] == '\t') {
		j++
	}
	return j
}

// command parses one command: ALL, a Cmnd_Alias, sudoedit, list, or a
// full path with optional arguments, each optionally preceded by digests
// and negated.
func (p *parser) command(withArgs bool) error {
	p.space()
	digest, err := p.digests()
	if err != nil {
		return err
	}
	if digest && !withArgs {
		return p.errf("sudo cannot read a digest in the commands of a Defaults! line; bind the Defaults to the command's path")
	}
	p.negations()
	w := p.peekIdent()
	switch {
	case w == "ALL" && p.wordEnds(len(w)):
		p.i += len(w)
		return nil
	case isAliasName(w) && p.wordEnds(len(w)):
		if digest {
			return p.errf("a digest must be followed by a full path or ALL, not the Cmnd_Alias %s; put the digest in the alias", w)
		}
		p.i += len(w)
		p.addRef(w, cmndAlias)
		return nil
	case w == "sudoedit" && p.wordEnds(len(w)):
		p.i += len(w)
		if !withArgs {
			return nil
		}
		return p.args()
	case w == "list" && p.wordEnds(len(w)):
		p.i += len(w)
		return nil // sudo's "list" takes no arguments
	case p.peek() == '/':
		dir, err := p.path()
		if err != nil || dir || !withArgs {
			return err // a directory takes no arguments
		}
		return p.args()
	case p.peek() == '^':
		return p.errf("regular-expression commands (^...$) are refused (sudo before 1.9.10 does not know them); name the command by its full path")
	case p.peek() == '"':
		return p.errf("a command must be a full path, not a quoted string")
	}
	return p.errf("expected a command: a full path starting with /, ALL, sudoedit or a Cmnd_Alias")
}

// wordEnds reports whether the identifier of length n at the cursor is a
// whole word.
func (p *parser) wordEnds(n int) bool {
	j := p.i + n
	return j >= len(p.s) || strings.IndexByte(" \t,:#", p.s[j]) >= 0
}

// path scans a command path and reports whether it names a directory.
// Sudo ends a path at a blank or one of , : = # unless a backslash
// escapes it; no other backslash escape is allowed.
func (p *parser) path() (bool, error) {
	start := p.i
	p.i++
	for p.i < len(p.s) {
		b := p.s[p.i]
		if b == '\\' {
			if p.i+1 >= len(p.s) || strings.IndexByte(",:= \t#", p.s[p.i+1]) < 0 {
				return false, p.errf("a backslash in a command path may only escape a blank or one of , : = #")
			}
			p.i += 2
			continue
		}
		if strings.IndexByte(" \t,:#", b) >= 0 {
			break
		}
		if b == '=' {
			return false, p.errf("'=' in a command path must be escaped with a backslash")
		}
		p.i++
	}
	path := p.s[start:p.i]
	switch {
	case path == "/":
		p.i = start
		return false, p.errf("expected a command after /")
	case strings.HasSuffix(path, "/sudoedit"):
		p.i = start
		return false, p.errf("sudoedit is built into sudo: write sudoedit, not a path to it")
	}
	return strings.HasSuffix(path, "/"), nil
}

// argEscapes are the characters a backslash may escape in command
// arguments: glob characters (kept escaped) and sudoers' own.
const argEscapes = "*?[]!^:\\,= \t#"

// args consumes command arguments up to an unescaped ',', ':' or '#', or
// an '=' standing alone, as sudo's lexer does. A first argument starting
// with '^' is a regular expression that runs to the '$' ending it.
func (p *parser) args() error {
	p.space()
	if p.peek() == '^' {
		return p.regexArg()
	}
	runStart := true // at the start of a run of plain characters
	for p.i < len(p.s) {
		b := p.s[p.i]
		switch {
		case b == '\\':
			if p.i+1 >= len(p.s) || strings.IndexByte(argEscapes, p.s[p.i+1]) < 0 {
				return p.errf("a backslash in command arguments may only escape a blank or one of * ? [ ] ! ^ : \\ , = #")
			}
			p.i += 2
			runStart = true
			continue
		case b == ' ' || b == '\t':
			p.i++
			runStart = true
			continue
		case b == ',' || b == ':' || b == '#':
			return nil
		case b == '=' && runStart && strings.IndexByte("#\\:, \t\x00", p.peekAt(p.i+1)) >= 0:
			return nil
		}
		p.i++
		runStart = false
	}
	return nil
}

// regexArg scans "^...$" arguments and checks the expression compiles.
func (p *parser) regexArg() error {
	start := p.i
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case '\\':
			p.i += 2
			continue
		case '#':
			return p.errf("unterminated regular expression: arguments starting with ^ must end with $ (a '#' inside must be escaped)")
		case '$':
			p.i++
			if _, err := regexp.CompilePOSIX(p.s[start:p.i]); err != nil {
				p.i = start
				return p.errf("invalid regular expression in the arguments: %v", err)
			}
			return nil
		}
		p.i++
	}
	p.i = start
	return p.errf("unterminated regular expression: arguments starting with ^ must end with $")
}
