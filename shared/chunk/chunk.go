// Package chunk holds the bounds of the messages an artifact download
// carries, which the controller enforces and the agent adapts within: a
// link that breaks often keeps more of what it received with smaller
// chunks, a steady one wastes less per message with larger ones.
package chunk

// The bounds of a download chunk, in bytes.
const (
	// Min is the smallest chunk the controller sends (but for the last).
	Min = 32 << 10
	// Max is the largest, and what an agent that asks for no size gets.
	Max = 1 << 20
)

// Size is the chunk size for a request asking for at most asked bytes:
// 0 (an agent that does not ask) means Max, anything else is bounded to
// [Min, Max].
func Size(asked uint32) int {
	switch {
	case asked == 0 || asked >= Max:
		return Max
	case asked < Min:
		return Min
	}
	return int(asked)
}
