// Package sudoers checks sudoers fragments before Ferry installs them.
//
// It parses the part of the sudoers grammar that fragments use in practice:
// user specifications (user, %group, #uid, %#gid, +netgroup, aliases, ALL,
// negation), host lists (names, addresses, masks, netgroups), Runas
// specifications "(user:group)", option specs (TIMEOUT=, CWD=, ...), tags
// (NOPASSWD:, PASSWD:, SETENV:, NOEXEC:, ...), commands (full paths with
// arguments, "" for none, wildcards, digests, sudoedit, ALL, Cmnd_Alias),
// the four alias kinds, Defaults with their bindings, comments and line
// continuations. It refuses #include, #includedir, @include and
// @includedir (a fragment must not pull in other files), aliases used but
// not defined in the fragment, aliases defined twice or in a cycle, and
// anything it does not understand. A refusal names the line and the fix.
//
// It is deliberately stricter than sudo: sudo treats a broken fragment as
// fatal for every rule on the host, so doubt means no.
package sudoers

import (
	"fmt"
	"sort"
	"strings"
)

// Error is a refusal, with the 1-based line it is about.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("sudoers line %d: %s", e.Line, e.Msg) }

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

var options = map[string]bool{
	"ROLE": true, "TYPE": true, "APPARMOR_PROFILE": true, "PRIVS": true,
	"LIMITPRIVS": true, "NOTBEFORE": true, "NOTAFTER": true, "TIMEOUT": true,
	"CWD": true, "CHROOT": true,
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

// Check parses a sudoers fragment and returns nil when it is valid.
func Check(text string) error {
	c := &checker{defs: map[string]*aliasDef{}}
	if strings.IndexByte(text, 0) >= 0 {
		return &Error{Line: 1 + strings.Count(text[:strings.IndexByte(text, 0)], "\n"), Msg: "contains a NUL byte"}
	}
	if strings.Contains(text, "\r") {
		return &Error{Line: 1 + strings.Count(text[:strings.IndexByte(text, '\r')], "\n"), Msg: "contains a carriage return; use Unix line endings"}
	}
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		start := i + 1
		line := lines[i]
		// A backslash at the end of a line continues it on the next.
		for endsWithEscape(line) && i+1 < len(lines) {
			i++
			line = line[:len(line)-1] + " " + lines[i]
		}
		if endsWithEscape(line) {
			return &Error{Line: start, Msg: "line continuation (trailing backslash) at the end of the file"}
		}
		c.lineNo = start
		if err := c.line(line); err != nil {
			return &Error{Line: start, Msg: err.Error()}
		}
	}
	return c.resolve()
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
	case hasWordPrefix(rest, "#include"), hasWordPrefix(rest, "#includedir"),
		hasWordPrefix(rest, "@include"), hasWordPrefix(rest, "@includedir"):
		return fmt.Errorf("include directives are refused: a fragment must not pull in other files")
	case rest[0] == '#':
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

func hasWordPrefix(s, w string) bool {
	if !strings.HasPrefix(s, w) {
		return false
	}
	return len(s) == len(w) || s[len(w)] == ' ' || s[len(w)] == '\t'
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

// end reports whether only blanks and a comment remain.
func (p *parser) end() bool {
	p.space()
	return p.i >= len(p.s) || p.s[p.i] == '#' && !p.uidAhead()
}

func (p *parser) uidAhead() bool {
	return p.i+1 < len(p.s) && p.s[p.i] == '#' && isDigit(p.s[p.i+1])
}

func (p *parser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
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

func isDigit(b byte) bool { return b >= '0' && b <= '9' }
func isUpper(b byte) bool { return b >= 'A' && b <= 'Z' }

// peekIdent returns the run of letters, digits and underscores at the cursor.
func (p *parser) peekIdent() string {
	j := p.i
	for j < len(p.s) && (isUpper(p.s[j]) || p.s[j] >= 'a' && p.s[j] <= 'z' || isDigit(p.s[j]) || p.s[j] == '_') {
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
// a meaning to, which a backslash escapes.
func (p *parser) word() (string, error) {
	if p.peek() == '"' {
		return p.quoted()
	}
	start := p.i
	for p.i < len(p.s) {
		b := p.s[p.i]
		if b == '\\' {
			if p.i+1 >= len(p.s) || p.s[p.i+1] == ' ' || p.s[p.i+1] == '\t' {
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

func (p *parser) quoted() (string, error) {
	start := p.i
	p.i++
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case '\\':
			p.i += 2
			continue
		case '"':
			p.i++
			return p.s[start:p.i], nil
		}
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
	for p.peek() == '!' {
		p.i++
		p.space()
	}
	switch b := p.peek(); {
	case b == '#' && k != hostAlias:
		p.i++
		return p.digits("a numeric ID after #")
	case b == '%' && k != hostAlias:
		p.i++
		if p.peek() == ':' {
			p.i++
		}
		if p.peek() == '#' {
			p.i++
			return p.digits("a numeric group ID after %#")
		}
		_, err := p.word()
		return err
	case b == '+':
		p.i++
		_, err := p.word()
		return err
	}
	w, err := p.word()
	if err != nil {
		return err
	}
	if w == "ALL" {
		return nil
	}
	if isAliasName(w) {
		p.addRef(w, k)
		return nil
	}
	if k == hostAlias {
		return checkHost(w, p)
	}
	return nil
}

func checkHost(w string, p *parser) error {
	if strings.Count(w, "/") > 1 {
		return p.errf("host %q is not a host name, address or address/mask", w)
	}
	return nil
}

func (p *parser) digits(what string) error {
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
		if name == "ALL" {
			return p.errf("ALL is reserved and cannot name an alias")
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
		if p.peek() != ':' {
			return p.errf("expected ':' or the end of the line")
		}
		p.i++
	}
}

func (p *parser) defaults() error {
	p.i += len("Defaults")
	switch p.peek() {
	case '@':
		p.i++
		if err := p.list(hostAlias); err != nil {
			return err
		}
	case ':':
		p.i++
		if err := p.list(userAlias); err != nil {
			return err
		}
	case '>':
		p.i++
		if err := p.list(runasAlias); err != nil {
			return err
		}
	case '!':
		p.i++
		if err := p.cmndList(); err != nil {
			return err
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
		p.space()
		neg := false
		for p.peek() == '!' {
			neg = true
			p.i++
		}
		name := p.peekIdent()
		if name == "" || !(name[0] >= 'a' && name[0] <= 'z') {
			return p.errf("expected a Defaults setting name (lower case)")
		}
		p.i += len(name)
		p.space()
		op := ""
		switch {
		case strings.HasPrefix(p.s[p.i:], "+="), strings.HasPrefix(p.s[p.i:], "-="):
			op = p.s[p.i : p.i+2]
		case p.peek() == '=':
			op = "="
		}
		if op != "" {
			if neg {
				return p.errf("a negated setting (!%s) takes no value", name)
			}
			p.i += len(op)
			p.space()
			if err := p.defaultsValue(); err != nil {
				return err
			}
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

func (p *parser) defaultsValue() error {
	if p.peek() == '"' {
		_, err := p.quoted()
		return err
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
		p.i++
	}
	if p.i == start {
		return p.errf("expected a value")
	}
	return nil
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
		if p.peek() != ':' {
			return p.errf("expected ',', ':' or the end of the line")
		}
		p.i++
	}
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
// the first blank ends the list.
func (p *parser) cmndList() error {
	for {
		if err := p.command(false); err != nil {
			return err
		}
		if p.peek() != ',' {
			return nil
		}
		p.i++
	}
}

// specPrefix parses the optional Runas_Spec, Option_Specs and Tag_Specs
// before a command.
func (p *parser) specPrefix() error {
	if p.peek() == '(' {
		p.i++
		p.space()
		if p.peek() != ':' && p.peek() != ')' {
			if err := p.list(runasAlias); err != nil {
				return err
			}
		}
		p.space()
		if p.peek() == ':' {
			p.i++
			p.space()
			if p.peek() != ')' {
				if err := p.list(runasAlias); err != nil {
					return err
				}
			}
		}
		if err := p.expect(')', "')' closing the Runas specification"); err != nil {
			return err
		}
	}
	for {
		p.space()
		w := p.peekIdent()
		if w == "" || !isAliasName(w) {
			return nil
		}
		after := p.i + len(w)
		switch {
		case options[w] && after < len(p.s) && p.s[after] == '=':
			p.i = after + 1
			if err := p.defaultsValue(); err != nil {
				return err
			}
		case after < len(p.s) && p.s[after] == ':':
			if isDigest(w) {
				return nil // a digest, parsed with the command
			}
			if !tags[w] {
				return p.errf("unknown tag %s:; the tags are NOPASSWD, PASSWD, SETENV, NOSETENV, EXEC, NOEXEC, LOG_INPUT, LOG_OUTPUT, MAIL, FOLLOW, INTERCEPT and their NO forms", w)
			}
			p.i = after + 1
		default:
			return nil
		}
	}
}

// digestLenOK checks the length of a hex or base64 digest.
func digestLenOK(alg string, n int) bool {
	size := map[string]int{"sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}[strings.ToLower(alg)]
	return n == 2*size || n == 4*((size+2)/3)
}

func isDigest(w string) bool {
	switch strings.ToLower(w) {
	case "sha224", "sha256", "sha384", "sha512":
		return true
	}
	return false
}

// command parses one command: ALL, a Cmnd_Alias, sudoedit, list, or a
// full path with optional arguments, each optionally negated and preceded
// by digests.
func (p *parser) command(withArgs bool) error {
	p.space()
	for p.peek() == '!' {
		p.i++
		p.space()
	}
	for {
		w := p.peekIdent()
		if !isDigest(w) || p.i+len(w) >= len(p.s) || p.s[p.i+len(w)] != ':' {
			break
		}
		p.i += len(w) + 1
		start := p.i
		for p.i < len(p.s) && (isDigit(p.s[p.i]) || isUpper(p.s[p.i]) || p.s[p.i] >= 'a' && p.s[p.i] <= 'z' || strings.IndexByte("+/=", p.s[p.i]) >= 0) {
			p.i++
		}
		if !digestLenOK(w, p.i-start) {
			p.i = start
			return p.errf("expected a %s digest in hex or base64 after %s:", w, w)
		}
		p.space()
		if p.peek() == ',' {
			p.i++
			p.space()
		}
	}
	w := p.peekIdent()
	switch {
	case w == "ALL" && p.wordEnds(len(w)):
		p.i += len(w)
		return nil
	case isAliasName(w) && p.wordEnds(len(w)):
		p.i += len(w)
		p.addRef(w, cmndAlias)
		return nil
	case (w == "sudoedit" || w == "list") && p.wordEnds(len(w)):
		p.i += len(w)
		return p.args()
	case p.peek() == '/':
		if err := p.path(); err != nil {
			return err
		}
		if !withArgs {
			return nil
		}
		return p.args()
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

func (p *parser) path() error {
	for p.i < len(p.s) {
		b := p.s[p.i]
		if b == '\\' {
			if p.i+1 >= len(p.s) {
				return p.errf("backslash escapes nothing")
			}
			p.i += 2
			continue
		}
		if b == ' ' || b == '\t' || b == ',' || b == ':' {
			return nil
		}
		if b == '=' || b == '(' || b == ')' || b == '!' {
			return p.errf("%q in a command path must be escaped with a backslash", b)
		}
		p.i++
	}
	return nil
}

// args consumes command arguments up to an unescaped ',' or ':' or a
// comment.
func (p *parser) args() error {
	p.space()
	if strings.HasPrefix(p.s[p.i:], `""`) {
		p.i += 2
		return nil
	}
	for p.i < len(p.s) {
		b := p.s[p.i]
		switch {
		case b == '\\':
			if p.i+1 >= len(p.s) {
				return p.errf("backslash escapes nothing")
			}
			p.i += 2
			continue
		case b == ',' || b == ':':
			return nil
		case b == '#' && (p.s[p.i-1] == ' ' || p.s[p.i-1] == '\t'):
			return nil
		}
		p.i++
	}
	return nil
}
