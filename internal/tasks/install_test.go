package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// TestInstallBeforeTheAgencyPair: an INSTALL whose task runs before the
// agency pair is stored is retried (an error asynq retries, not SkipRetry);
// once the pair is stored the same task mints the location's token. A task
// for a location uninstalled since does nothing; one on workers without
// OAuth settings records nothing to do.
func TestInstallBeforeTheAgencyPair(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	sb := sandbox.New(sandbox.Config{RateMax: -1})
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	key := []byte("0123456789abcdef0123456789abcdef")
	pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: srv.URL + "/oauth/token", Company: true,
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: key})
	require.NoError(t, err)
	agency, err := tokens.NewAgency(tokens.AgencyConfig{Redis: rdb, BaseURL: srv.URL, Pairs: pairs, Key: key})
	require.NoError(t, err)
	h := &InstallHandler{Tokens: tokens.NewChain(agency), Redis: rdb}
	const company, loc = "companyInstall000001", "locInstall0000000001"
	sb.InstallLocation(company, loc, "")
	task, err := NewInstallTask(InstallPayload{LocationID: loc, CompanyID: company}, "wh-install-1")
	require.NoError(t, err)
	_, err = tokens.RecordAppEvent(ctx, rdb, loc, true, time.Now())
	require.NoError(t, err)

	err = h.ProcessTask(ctx, task)
	require.ErrorIs(t, err, tokens.ErrNoToken, "retried until the agency pair is stored")
	require.False(t, errors.Is(err, asynq.SkipRetry))
	require.True(t, IsFailure(err), "each try uses up an attempt (about 7 hours of them)")
	require.Empty(t, sb.Mints(loc))

	require.NoError(t, tokens.SetAgency(ctx, pairs, company, sandbox.AppIDDefault, "", sb.AddAgency(company), 0))
	require.NoError(t, h.ProcessTask(ctx, task))
	require.Len(t, sb.Mints(loc), 1, "the retried install minted the token")

	// Uninstalled since: nothing to mint.
	_, err = tokens.SetInstalled(ctx, rdb, loc, "", false, time.Now().Add(time.Second))
	require.NoError(t, err)
	require.NoError(t, h.ProcessTask(ctx, task))
	require.Len(t, sb.Mints(loc), 1)

	// Workers without the agency source: the install is recorded, no retries.
	require.NoError(t, (&InstallHandler{Tokens: tokens.Static("pit"), Redis: rdb}).ProcessTask(ctx, task))

	// A payload that is not an install: dropped, not retried.
	bad := asynq.NewTask(TypeInstall, json.RawMessage(`{"location_id":"bad/loc"}`))
	require.ErrorIs(t, h.ProcessTask(ctx, bad), asynq.SkipRetry)
}
