package store

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Every record is a protobuf message; these read and write them. what
// names the record kind in errors ("node", "artifact record").

// message is a pointer to a generated message type T.
type message[T any] interface {
	*T
	proto.Message
}

func put(b kvBucket, what, key string, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", what, key, err)
	}
	return b.Put([]byte(key), data)
}

func decode[T any, M message[T]](what string, key, data []byte) (M, error) {
	m := M(new(T))
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, key, err)
	}
	return m, nil
}

// get decodes the record under key; ErrNotFound when absent.
func get[T any, M message[T]](b kvBucket, what, key string) (M, error) {
	data := b.Get([]byte(key))
	if data == nil {
		return nil, ErrNotFound
	}
	return decode[T, M](what, []byte(key), data)
}

// forEach decodes every record of b in key order and calls fn with it.
func forEach[T any, M message[T]](b kvBucket, what string, fn func(key string, m M) error) error {
	return forEachKV(b, func(k, v []byte) error {
		m, err := decode[T, M](what, k, v)
		if err != nil {
			return err
		}
		return fn(string(k), m)
	})
}

// list decodes every record of b in key order.
func list[T any, M message[T]](b kvBucket, what string) ([]M, error) {
	var out []M
	err := forEach[T, M](b, what, func(_ string, m M) error {
		out = append(out, m)
		return nil
	})
	return out, err
}

// timestamp and fromTimestamp map the zero time to an absent field.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTimestamp(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
