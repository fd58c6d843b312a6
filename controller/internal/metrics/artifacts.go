package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterArtifacts registers ferry_artifacts_damaged on reg, read at
// scrape time from damaged (the artifact store's count of quarantined
// artifacts), so it stays up until each of them is pushed again. When
// damaged fails, the last count stands: an alert does not resolve because
// the store could not be read.
func RegisterArtifacts(reg prometheus.Registerer, damaged func() (int, error)) {
	var last atomic.Int64
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_artifacts_damaged",
		Help: "Artifacts whose stored bytes no longer match their digest: quarantined, not served to agents, until pushed again.",
	}, func() float64 {
		if n, err := damaged(); err == nil {
			last.Store(int64(n))
		}
		return float64(last.Load())
	}))
}
