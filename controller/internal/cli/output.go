package cli

// The output layer: every command prints through here, so -o means the same
// everywhere and scripts see one vocabulary.
//
//   - -o table (default) and -o wide are the command's text; wide adds
//     columns where a command has more to show (nodes).
//   - -o json and -o yaml print the same document: proto field names
//     (snake_case), enum values as the lowercase words flags take
//     ("healthy", "rolled_back", not NODE_STATE_HEALTHY), durations as Go
//     durations ("10s", "10m0s", what --progress-deadline accepts), times
//     as RFC 3339 in UTC, 64-bit integers as numbers, fields in proto order,
//     unset fields left out.
//
// To adopt it in a command:
//
//	return a.show(resp, func() error { ...table... })  // one message
//	return a.emit(v)                                    // a message, a slice of messages, or plain Go values
//	if a.machine() { ... }                              // json or yaml chosen: print no prose
//
// A watch calls a.emit once per event: JSON gives one document per event,
// YAML separates them with "---".

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Output formats -o takes.
const (
	outTable = "table"
	outWide  = "wide"
	outJSON  = "json"
	outYAML  = "yaml"
)

func (a *app) checkOutput() error {
	switch a.output {
	case outTable, outWide, outJSON, outYAML:
		return nil
	}
	return fmt.Errorf("--output %q is not supported: use table, wide, json or yaml", a.output)
}

// machine reports whether a document format (json or yaml) was chosen: the
// command then prints the document only, no prose.
func (a *app) machine() bool { return a.output == outJSON || a.output == outYAML }

// show prints m as a document with -o json or yaml, and otherwise runs
// text, the command's human-readable form.
func (a *app) show(m proto.Message, text func() error) error {
	if a.machine() {
		return a.emit(m)
	}
	return text()
}

// emit writes v as one JSON or YAML document (YAML when -o yaml, JSON
// otherwise). v may be a proto message, a slice or map of them, or plain
// Go values (structs are encoded by their json tags).
func (a *app) emit(v any) error {
	doc := toDoc(v)
	if a.output == outYAML {
		if a.emitted {
			if _, err := fmt.Fprintln(a.stdout, "---"); err != nil {
				return err
			}
		}
		a.emitted = true
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(doc); err != nil {
			return err
		}
		if err := enc.Close(); err != nil {
			return err
		}
		_, err := a.stdout.Write(buf.Bytes())
		return err
	}
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(doc)
}

// field is one key of an object; object keeps the fields in proto order
// in both encodings.
type field struct {
	key string
	val any
}

type object []field

func (o object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(f.key) // a string always marshals
		buf.Write(k)
		buf.WriteByte(':')
		v, err := json.Marshal(f.val)
		if err != nil {
			return nil, err
		}
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func (o object) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, f := range o {
		var v yaml.Node
		if err := v.Encode(f.val); err != nil {
			return nil, err
		}
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: f.key}, &v)
	}
	return n, nil
}

// toDoc turns v into plain values (object, []any, strings, numbers, bools)
// that encode the same way as JSON and YAML.
func toDoc(v any) any {
	if m, ok := v.(proto.Message); ok {
		if reflect.ValueOf(m).IsNil() {
			return nil
		}
		return messageDoc(m.ProtoReflect())
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return []any{}
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = toDoc(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return v
		}
		out := make(map[string]any, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			out[it.Key().String()] = toDoc(it.Value().Interface())
		}
		return out
	}
	return v
}

func messageDoc(m protoreflect.Message) any {
	switch t := m.Interface().(type) {
	case *timestamppb.Timestamp:
		return t.AsTime().UTC().Format(time.RFC3339Nano)
	case *durationpb.Duration:
		return t.AsDuration().String()
	}
	fields := m.Descriptor().Fields()
	obj := object{}
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		obj = append(obj, field{string(fd.Name()), fieldDoc(fd, m.Get(fd))})
	}
	return obj
}

func fieldDoc(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch {
	case fd.IsList():
		l := v.List()
		out := make([]any, l.Len())
		for i := range out {
			out[i] = scalarDoc(fd, l.Get(i))
		}
		return out
	case fd.IsMap():
		out := map[string]any{}
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			out[k.String()] = scalarDoc(fd.MapValue(), mv)
			return true
		})
		return out
	}
	return scalarDoc(fd, v)
}

func scalarDoc(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return messageDoc(v.Message())
	case protoreflect.EnumKind:
		et, err := protoregistry.GlobalTypes.FindEnumByName(fd.Enum().FullName())
		if err != nil {
			return int32(v.Enum()) // not linked in: the number, as protojson does
		}
		return enumword.Of(et.New(v.Enum()))
	case protoreflect.BytesKind:
		return base64.StdEncoding.EncodeToString(v.Bytes())
	}
	return v.Interface()
}
