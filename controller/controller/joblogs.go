package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

// LogLimits bound the job output the controller keeps.
type LogLimits struct {
	// MaxJobBytes per job: its first quarter and its newest lines are
	// kept, a marker says how much was cut between (default 256 KiB).
	MaxJobBytes int
	// MaxAge: a job's output is deleted this long after its last line
	// (default 30 days).
	MaxAge time.Duration
	// MaxTotalBytes: past it the oldest jobs' output is deleted (default
	// 1 GiB).
	MaxTotalBytes uint64
}

// Defaults for LogLimits, and what bounds a node's output rate: lines a
// second with a burst that lets an agent deliver a full buffer after a
// reconnect.
const (
	DefaultLogMaxAge        = 30 * 24 * time.Hour
	DefaultLogMaxTotalBytes = 1 << 30
	logLinesPerSecond       = 2000
	logLinesBurst           = 50000
	// logSweepEvery is how often expired output is deleted.
	logSweepEvery = 10 * time.Minute
)

func (l *LogLimits) setDefaults() error {
	if l.MaxJobBytes == 0 {
		l.MaxJobBytes = store.DefaultMaxJobLog
	}
	if l.MaxAge == 0 {
		l.MaxAge = DefaultLogMaxAge
	}
	if l.MaxTotalBytes == 0 {
		l.MaxTotalBytes = DefaultLogMaxTotalBytes
	}
	switch {
	case l.MaxJobBytes < 4<<10:
		return fmt.Errorf("--log-max-per-job %s is too small to be useful: use at least 4KiB", bytesize.IEC(uint64(l.MaxJobBytes))) //nolint:gosec // positive here
	case l.MaxAge < 0:
		return fmt.Errorf("--log-max-age %s is negative: use a duration such as 720h", l.MaxAge)
	case l.MaxTotalBytes < uint64(l.MaxJobBytes):
		return fmt.Errorf("--log-max-total %s is smaller than --log-max-per-job %s: raise it", bytesize.IEC(l.MaxTotalBytes), bytesize.IEC(uint64(l.MaxJobBytes)))
	}
	return nil
}

func newLogRate(now func() time.Time) *ratelimit.Limiter {
	return ratelimit.New(ratelimit.Rate{PerSecond: logLinesPerSecond, Burst: logLinesBurst}, now)
}

// expireLogsLoop deletes job output past the age and total bounds, now and
// every logSweepEvery, until ctx ends.
func (c *Controller) expireLogsLoop(ctx context.Context) {
	t := time.NewTicker(logSweepEvery)
	defer t.Stop()
	for {
		if n, err := c.store.ExpireJobLogs(c.cfg.Now(), c.cfg.Logs.MaxAge, c.cfg.Logs.MaxTotalBytes); err != nil {
			c.log.Warn("expire job logs", "err", err)
		} else if n > 0 {
			c.log.Info("expired job logs", "jobs", n, "max_age", c.cfg.Logs.MaxAge, "max_total", bytesize.IEC(c.cfg.Logs.MaxTotalBytes))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
