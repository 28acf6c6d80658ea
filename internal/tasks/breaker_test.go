package tasks

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

func TestAPIFailureFeedsTheBreaker(t *testing.T) {
	t.Parallel()
	now := time.Now()
	classify := func(status int) error {
		_, err := ghl.Classify(status, http.Header{}, fmt.Appendf(nil, `{"statusCode":%d,"message":"x"}`, status), now)
		return err
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"2xx", nil, false},
		{"400", classify(400), false},
		{"401", classify(401), false},
		{"404 (an answer: not cancellable)", classify(404), false},
		{"misrouted (a route-level 404)", &ghl.Error{Reason: ghl.ReasonMisrouted, Retryable: true}, true},
		{"429", classify(429), false},
		{"408", classify(408), true},
		{"500", classify(500), true},
		{"503", classify(503), true},
		{"timeout", &ghl.Error{Reason: ghl.ReasonTimeout, Retryable: true}, true},
		{"connection reset", &ghl.Error{Reason: ghl.ReasonNetwork, Retryable: true}, true},
		{"untyped transport error", errors.New("dial tcp: refused"), true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, apiFailure(tt.err), tt.name)
	}
}
