package tokens_test

import (
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// BenchmarkChainToken is what a cancel pays for its token, through the
// worker's chain (explicit tokens, location pairs, agency): a location with
// its own OAuth pair (the baseline) and one served by the agency, both with
// a fresh token at hand. It reports Redis commands per call.
func BenchmarkChainToken(b *testing.B) {
	ctx := context.Background()
	url := redisServer.URL(b)
	rdb := redistest.ClientFor(b, url)
	sb := setupAgencyB(b)
	pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: sb.srv.URL + "/oauth/token",
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	if err != nil {
		b.Fatal(err)
	}
	const paired, minted = "locBench000000000001", "locBench000000000002"
	if err := pairs.Set(ctx, paired, "", sb.sb.AddOAuthLocation(paired), 0); err != nil {
		b.Fatal(err)
	}
	agencyPairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: sb.srv.URL + "/oauth/token", Company: true,
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	if err != nil {
		b.Fatal(err)
	}
	if err := tokens.SetAgency(ctx, agencyPairs, testCompany, sandbox.AppIDDefault, "", sb.sb.AddAgency(testCompany), 0); err != nil {
		b.Fatal(err)
	}
	sb.sb.InstallLocation(testCompany, minted, "")
	agency, err := tokens.NewAgency(tokens.AgencyConfig{Redis: rdb, BaseURL: sb.srv.URL, Pairs: agencyPairs, Key: testKey})
	if err != nil {
		b.Fatal(err)
	}
	chain := tokens.NewChain(staticFor{}, pairs, agency)
	for _, loc := range []string{paired, minted} {
		name := map[string]string{paired: "location_pair", minted: "agency"}[loc]
		b.Run(name, func(b *testing.B) {
			if _, err := chain.Token(ctx, loc); err != nil { // warm: refreshed or minted once
				b.Fatal(err)
			}
			before := commands(b, rdb)
			b.ResetTimer()
			for b.Loop() {
				if _, err := chain.Token(ctx, loc); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(commands(b, rdb)-before-1)/float64(b.N), "redis-cmds/op")
		})
	}
}

func setupAgencyB(b *testing.B) *agencyBundle {
	sb := sandbox.New(sandbox.Config{RateMax: -1})
	srv := newHTTPServer(b, sb)
	return &agencyBundle{sb: sb, srv: srv}
}

// commands is Redis's total_commands_processed.
func commands(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no total_commands_processed")
	return 0
}

func newHTTPServer(b *testing.B, sb *sandbox.Server) *httptest.Server {
	srv := httptest.NewServer(sb.Handler())
	b.Cleanup(srv.Close)
	return srv
}
