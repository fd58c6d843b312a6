package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// slogWriter turns memberlist's log lines ("[WARN] memberlist: text") into
// slog records at the matching level.
type slogWriter struct {
	logger *slog.Logger
}

func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{logger: l}, "", 0)
}

var levelPrefixes = []struct {
	prefix string
	level  slog.Level
}{
	{"[TRACE]", slog.LevelDebug - 4},
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

// admitRefusal starts memberlist's line for an alive message an
// AliveDelegate (Config.Admit) refused.
const admitRefusal = "ignoring alive message for"

func (w slogWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for _, lp := range levelPrefixes {
		if rest, ok := bytes.CutPrefix(line, []byte(lp.prefix)); ok {
			level = lp.level
			line = bytes.TrimSpace(rest)
			break
		}
	}
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	if level > slog.LevelDebug && bytes.HasPrefix(line, []byte(admitRefusal)) {
		// Config.Admit's refusals, repeated at every push/pull: whoever
		// set Admit reports them as it sees fit.
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if w.logger.Enabled(ctx, level) {
		w.logger.Log(ctx, level, string(line))
	}
	return len(p), nil
}
