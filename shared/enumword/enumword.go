// Package enumword turns protobuf enum values into the lowercase words
// people and metric labels see: RolloutState_ROLLOUT_STATE_ROLLED_BACK is
// "rolled_back" (or "rolled back"). It relies on the buf STANDARD rule that
// every value name starts with its enum's name in UPPER_SNAKE_CASE.
package enumword

import (
	"strconv"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// Of returns the value's name without its enum's prefix, in lowercase:
// "rolled_back". A number the enum does not define is returned as digits,
// as its String method does.
func Of(e protoreflect.Enum) string {
	v := e.Descriptor().Values().ByNumber(e.Number())
	if v == nil {
		return strconv.Itoa(int(e.Number()))
	}
	prefix := upperSnake(string(e.Descriptor().Name())) + "_"
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix))
}

// Spaced is Of with spaces between the words: "rolled back".
func Spaced(e protoreflect.Enum) string {
	return strings.ReplaceAll(Of(e), "_", " ")
}

// upperSnake turns RolloutState into ROLLOUT_STATE.
func upperSnake(name string) string {
	var b strings.Builder
	for i, r := range name {
		if i > 0 && unicode.IsUpper(r) {
			prev := rune(name[i-1])
			if unicode.IsLower(prev) || unicode.IsDigit(prev) {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
