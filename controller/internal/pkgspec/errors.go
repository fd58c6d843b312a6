package pkgspec

import (
	"fmt"
	"strings"
)

// FieldError is one problem in a package file, located by line and field
// path so the author can go straight to it.
type FieldError struct {
	// File is the file name the package was parsed from.
	File string
	// Line and Column are 1-based; Line is 0 when the problem has no place
	// in the file.
	Line, Column int
	// Field is the path of the field, e.g. "steps[1].env.vars.PATH"; empty
	// for problems with the file as a whole.
	Field string
	// Problem says what is wrong, Fix what to do about it.
	Problem, Fix string
	// Err is the underlying cause, if any (for example the resolver's
	// error), so callers can use errors.Is.
	Err error
}

// Error formats the problem as "file:line: field: problem; fix".
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

func (e *FieldError) Unwrap() error { return e.Err }

// ErrorList is every problem found in one package file, in file order.
// Parse reports all the problems it finds (up to maxErrors), not just the
// first, so an author can fix a file in one pass.
type ErrorList []*FieldError

// Error puts one problem on each line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As see each problem.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}
