// Package promtest scrapes a /metrics endpoint in tests over HTTP, so
// end-to-end tests read the same text Prometheus would.
package promtest

import (
	"fmt"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ghlcancel/ghlcancel/metrics"
)

// Scrape is one parsed scrape.
type Scrape []*dto.MetricFamily

// Get scrapes url.
func Get(url string) (Scrape, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	out := make(Scrape, 0, len(byName))
	for _, mf := range byName {
		out = append(out, mf)
	}
	return out, nil
}

// Sum is metrics.Sum over the scrape.
func (s Scrape) Sum(name string, match ...string) float64 {
	return metrics.Sum(s, name, match...)
}
