// Package deploy holds the compose stack's configuration (Prometheus,
// alerts, Grafana) and the tests that check it, since no Docker engine runs
// where the suite does: the compose file is checked statically against the
// binaries, then the binaries run with the compose file's own configuration
// under a real Prometheus that evaluates every dashboard query and alert.
package deploy

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
)

// commands are the binaries the image holds (built as the Dockerfile does).
var commands = []string{"worker", "intake", "enqueue", "sandbox"}

var (
	root   string              // repository root
	binDir string              // built binaries
	flags  map[string][]string // binary -> flag names
	redisS *redistest.Server
)

func TestMain(m *testing.M) {
	wd, _ := os.Getwd()
	root = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "ghlcancel-deploy-")
	if err == nil {
		binDir = dir
		err = build(dir)
	}
	if err == nil {
		redisS, err = redistest.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy tests:", err)
		os.Exit(2)
	}
	code := m.Run()
	redisS.Stop()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// build compiles the commands the way the Dockerfile does and collects each
// one's flags from its -h output.
func build(dir string) error {
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/"}
	for _, c := range commands {
		args = append(args, "./cmd/"+c)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	flags = map[string][]string{}
	re := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	for _, c := range commands {
		out, _ := exec.Command(filepath.Join(dir, c), "-h").CombinedOutput()
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			flags[c] = append(flags[c], m[1])
		}
	}
	return nil
}

// requireTool finds a Debian-packaged tool; CI (scripts/test) sets
// GHLCANCEL_REQUIRE_TOOLS so a missing one fails instead of skipping.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("GHLCANCEL_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s not installed (apt-get install prometheus)", name)
		}
		t.Skipf("%s not installed (apt-get install prometheus)", name)
	}
	return p
}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	Expose      []string          `yaml:"expose"`
	Profiles    []string          `yaml:"profiles"`
	Deploy      struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
}

type compose struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	var c compose
	require.NoError(t, yaml.Unmarshal(b, &c))
	return c
}

// envNames are the environment variables a command reads: the upper-case
// string literals of its main package and of the logging package.
func envNames(t *testing.T, cmd string) []string {
	t.Helper()
	re := regexp.MustCompile(`"([A-Z][A-Z0-9_]{2,})"`)
	var out []string
	for _, dir := range []string{"cmd/" + cmd, "internal/logging"} {
		files, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				out = append(out, m[1])
			}
		}
	}
	return out
}

// interpolate expands ${VAR:-default} and ${VAR} as compose does.
func interpolate(s string, env map[string]string) string {
	re := regexp.MustCompile(`\$\{([A-Z0-9_]+)(:-([^}]*))?\}`)
	return re.ReplaceAllStringFunc(s, func(m string) string {
		p := re.FindStringSubmatch(m)
		if v := env[p[1]]; v != "" {
			return v
		}
		return p[3]
	})
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func containerPort(mapping string) string {
	parts := strings.Split(mapping, ":")
	return parts[len(parts)-1]
}

// TestComposeFile checks docker-compose.yml against the binaries, the
// Dockerfile and the files it mounts.
func TestComposeFile(t *testing.T) {
	c := loadCompose(t)
	for _, want := range []string{"redis", "worker", "intake", "sandbox", "prometheus", "grafana", "asynqmon"} {
		require.Contains(t, c.Services, want)
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)

	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, ok := strings.Cut(v, ":")
			require.True(t, ok, "%s: volume %q", name, v)
			if strings.HasPrefix(src, ".") {
				_, err := os.Stat(filepath.Join(root, src))
				require.NoError(t, err, "%s mounts %s", name, src)
			} else {
				require.Contains(t, c.Volumes, src, "%s: named volume %s is not declared", name, src)
			}
		}
		if s.Build == nil {
			require.NotEmpty(t, s.Image, name)
			require.NotContains(t, s.Image, ":latest", "%s: pin the image version", name)
			continue
		}
		require.NotEmpty(t, s.Command, name)
		bin := s.Command[0]
		require.Contains(t, commands, bin, "%s runs %q", name, bin)
		require.Regexp(t, `go build[^\n]*\./cmd/`+bin+`\b`, string(dockerfile), "the Dockerfile must build %s", bin)
		require.Regexp(t, `COPY --from=build[^\n]*/out/`+bin+`\b`, string(dockerfile), "the Dockerfile must copy %s", bin)
		for _, a := range s.Command[1:] {
			if f, ok := strings.CutPrefix(a, "-"); ok {
				f, _, _ = strings.Cut(strings.TrimPrefix(f, "-"), "=")
				require.Contains(t, flags[bin], f, "%s: %s has no flag -%s", name, bin, f)
			}
		}
		known := envNames(t, bin)
		for k := range s.Environment {
			require.Contains(t, known, k, "%s: %s does not read %s", name, bin, k)
		}
	}

	// Listen ports agree with the ports published or exposed.
	w, in, sb := c.Services["worker"], c.Services["intake"], c.Services["sandbox"]
	require.Equal(t, 2, w.Deploy.Replicas, "two worker replicas")
	require.Contains(t, w.Expose, port(w.Environment["METRICS_ADDR"]))
	require.Equal(t, port(in.Environment["INTAKE_ADDR"]), containerPort(in.Ports[0]))
	require.Equal(t, []string{"demo"}, sb.Profiles)
	addr := sb.Command[slices.Index(sb.Command, "-addr")+1]
	require.Equal(t, port(addr), containerPort(sb.Ports[0]))
	require.Equal(t, "redis://redis:6379/0", w.Environment["REDIS_URL"])
	require.Equal(t, "redis://redis:6379/0", in.Environment["REDIS_URL"])

	// Redis: AOF on, never evict queued tasks, compact task hashes.
	rc := strings.Join(c.Services["redis"].Command, " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy noeviction", "--hash-max-listpack-value 512"} {
		require.Contains(t, rc, want)
	}

	// Prometheus scrapes the services on their ports and loads the rules.
	var pc struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &pc))
	require.Contains(t, c.Services["prometheus"].Volumes, "./deploy/prometheus:/etc/prometheus:ro")
	for _, rf := range pc.RuleFiles {
		_, err := os.Stat(filepath.Join(root, "deploy/prometheus", rf))
		require.NoError(t, err)
	}
	jobs := map[string]string{}
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			jobs[sc.JobName] = st.Targets[0]
		}
		for _, d := range sc.DNSSDConfigs {
			jobs[sc.JobName] = fmt.Sprintf("%s:%d", d.Names[0], d.Port)
		}
	}
	require.Equal(t, "worker:"+port(w.Environment["METRICS_ADDR"]), jobs["ghlcancel-worker"])
	require.Equal(t, "intake:"+port(in.Environment["INTAKE_ADDR"]), jobs["ghlcancel-intake"])

	// Grafana: the datasource is the prometheus service, with the uid the
	// dashboard uses; the dashboard folder is mounted where the provider reads.
	var ds struct {
		Datasources []struct{ UID, URL string } `yaml:"datasources"`
	}
	b, err = os.ReadFile(filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &ds))
	require.Equal(t, "http://prometheus:9090", ds.Datasources[0].URL)
	require.Contains(t, c.Services["prometheus"].Ports, "9090:9090")
	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	b, err = os.ReadFile(filepath.Join(root, "deploy/grafana/provisioning/dashboards/ghlcancel.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &prov))
	require.Contains(t, c.Services["grafana"].Volumes, "./deploy/grafana/dashboards:"+prov.Providers[0].Options.Path+":ro")
	for _, p := range dashboard(t).Panels {
		require.Equal(t, ds.Datasources[0].UID, p.Datasource.UID, p.Title)
	}

	// The image: multi-stage, static binaries, not root.
	require.GreaterOrEqual(t, strings.Count(string(dockerfile), "\nFROM "), 1)
	require.Contains(t, string(dockerfile), "CGO_ENABLED=0")
	require.Regexp(t, `(?m)^USER 65532`, string(dockerfile))
	for _, cmd := range commands {
		f, err := elf.Open(filepath.Join(binDir, cmd))
		require.NoError(t, err)
		for _, p := range f.Progs {
			require.NotEqual(t, elf.PT_INTERP, p.Type, "%s is dynamically linked", cmd)
		}
		f.Close()
	}
}

type panel struct {
	Title      string `json:"title"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func dashboard(t *testing.T) struct{ Panels []panel } {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy/grafana/dashboards/ghlcancel.json"))
	require.NoError(t, err)
	var d struct{ Panels []panel }
	require.NoError(t, json.Unmarshal(b, &d))
	require.NotEmpty(t, d.Panels)
	return d
}

type rule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func alertRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/alerts.yml"))
	require.NoError(t, err)
	var f struct {
		Groups []struct {
			Rules []struct {
				rule        `yaml:",inline"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(b, &f))
	var out []rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Annotations["runbook"], "%s has no runbook line", r.Alert)
			require.NotEmpty(t, r.Annotations["summary"], r.Alert)
			out = append(out, r.rule)
		}
	}
	return out
}

// TestPromtool runs promtool over the configuration and the alert unit tests.
func TestPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = filepath.Join(root, "deploy/prometheus")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %v:\n%s", args, out)
	}
}

// proc is a started binary; addr is what it printed after "http://".
type proc struct {
	cmd  *exec.Cmd
	addr string
	out  *syncbuf.Buffer
}

// start runs a binary and waits for the line announcing its address.
func start(t *testing.T, bin string, args []string, env map[string]string, announce *regexp.Regexp) *proc {
	t.Helper()
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(binDir, bin)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &proc{cmd: cmd, out: &syncbuf.Buffer{}}
	pr, pw := io.Pipe()
	both := io.MultiWriter(pw, p.out)
	cmd.Stdout, cmd.Stderr = both, both
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
		pw.Close()
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() { // keep reading to the end, or the process blocks writing
			if m := announce.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
	}()
	select {
	case p.addr = <-found:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start:\n%s", bin, p.out.String())
	}
	return p
}

// TestStackUnderPrometheus runs the compose stack's binaries with the
// compose file's configuration (demo profile: the sandbox as HighLevel),
// pushes a campaign through the intake API, and has a real Prometheus
// scrape both workers and the intake API with the stack's alert rules. Then
// every dashboard query must return data and every alert must evaluate.
func TestStackUnderPrometheus(t *testing.T) {
	prometheus := requireTool(t, "prometheus")
	c := loadCompose(t)
	tmp := t.TempDir()
	redisURL := redisS.URL(t)

	// Mounts: bind mounts become copies (the test writes secrets into
	// them), named volumes fresh folders; container paths in env values and
	// arguments are mapped onto them.
	mounts := map[string]string{}
	for _, s := range c.Services {
		for _, v := range s.Volumes {
			src, dst, _ := strings.Cut(v, ":")
			dst, _, _ = strings.Cut(dst, ":")
			if _, done := mounts[dst]; done {
				continue
			}
			host := filepath.Join(tmp, "vol", strings.Trim(strings.ReplaceAll(src, "/", "_"), "._"))
			require.NoError(t, os.MkdirAll(host, 0o755))
			if strings.HasPrefix(src, ".") {
				require.NoError(t, os.CopyFS(host, os.DirFS(filepath.Join(root, src))))
			}
			mounts[dst] = host
		}
	}
	const key = "stack-test-key-0123456789"
	require.NoError(t, os.WriteFile(filepath.Join(mounts["/secrets"], "intake-api-keys.txt"), []byte(key+"\n"), 0o600))
	hosts := map[string]string{"redis://redis:6379/0": redisURL}
	rewrite := func(v string) string {
		for from, to := range hosts {
			v = strings.ReplaceAll(v, from, to)
		}
		for dst, host := range mounts {
			if v == dst || strings.HasPrefix(v, dst+"/") {
				return host + strings.TrimPrefix(v, dst)
			}
		}
		if strings.HasPrefix(v, ":") { // a listen address: any free loopback port
			return "127.0.0.1:0"
		}
		return v
	}
	// The demo profile, as the compose file's header says to run it.
	shellEnv := map[string]string{"GHL_TOKENS_FILE": "/shared/sandbox-tokens.json"}
	envOf := func(s service) map[string]string {
		out := map[string]string{}
		for k, v := range s.Environment {
			out[k] = rewrite(interpolate(v, shellEnv))
		}
		return out
	}
	argsOf := func(s service, override map[string]string) []string {
		var out []string
		for i := 1; i < len(s.Command); i++ {
			a := s.Command[i]
			out = append(out, a)
			if strings.HasPrefix(a, "-") && i+1 < len(s.Command) {
				i++
				v := rewrite(s.Command[i])
				if o, ok := override[a]; ok {
					v = o
				}
				out = append(out, v)
			}
		}
		return out
	}

	// 5 locations x 60 messages instead of 2,000, so the default 100/10 s
	// pacing finishes in seconds.
	sb := start(t, "sandbox", argsOf(c.Services["sandbox"], map[string]string{"-messages": "60"}), nil,
		regexp.MustCompile(`serving (http://\S+)`))
	shellEnv["GHL_BASE_URL"] = sb.addr
	hosts["http://sandbox:8089"] = sb.addr

	workerRe := regexp.MustCompile(`on http://(\S+)`)
	var workers []*proc
	for range c.Services["worker"].Deploy.Replicas {
		workers = append(workers, start(t, "worker", argsOf(c.Services["worker"], nil), envOf(c.Services["worker"]), workerRe))
	}
	intake := start(t, "intake", argsOf(c.Services["intake"], nil), envOf(c.Services["intake"]), regexp.MustCompile(`serving on http://(\S+)`))

	// Prometheus: the stack's configuration and rules, targets on loopback,
	// 1 s scrapes and evaluations.
	var pcfg map[string]any
	b, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &pcfg))
	pcfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	var rules []string
	for _, rf := range pcfg["rule_files"].([]any) {
		rules = append(rules, filepath.Join(root, "deploy/prometheus", rf.(string)))
	}
	pcfg["rule_files"] = rules
	var workerTargets []string
	for _, w := range workers {
		workerTargets = append(workerTargets, w.addr)
	}
	pcfg["scrape_configs"] = []map[string]any{
		{"job_name": "ghlcancel-worker", "static_configs": []map[string]any{{"targets": workerTargets}}},
		{"job_name": "ghlcancel-intake", "static_configs": []map[string]any{{"targets": []string{intake.addr}}}},
	}
	b, err = yaml.Marshal(pcfg)
	require.NoError(t, err)
	cfgPath := filepath.Join(tmp, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfgPath, b, 0o644))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	promAddr := ln.Addr().String()
	ln.Close()
	start(t, prometheus, []string{"--config.file=" + cfgPath, "--storage.tsdb.path=" + filepath.Join(tmp, "tsdb"),
		"--web.listen-address=" + promAddr}, nil, regexp.MustCompile(`(Server is ready to receive web requests)`))
	promURL := "http://" + promAddr

	// A campaign through the intake API, from the ids the sandbox scheduled.
	f, err := os.Open(filepath.Join(mounts["/shared"], "sandbox-ids.csv"))
	require.NoError(t, err)
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	require.NoError(t, err)
	var items []client.Cancel
	for _, r := range rows[1:] {
		items = append(items, client.Cancel{MessageID: r[0], LocationID: r[1], Kind: r[2], CampaignID: "stack"})
	}
	items = append(items, client.Cancel{MessageID: "unknownMessage", LocationID: "unknownLocation", CampaignID: "stack"})
	cl, err := client.New("http://"+intake.addr, key)
	require.NoError(t, err)
	ctx := context.Background()
	res, err := cl.CancelMany(ctx, items, client.LaneBulk, false)
	require.NoError(t, err)
	require.Equal(t, len(items), res.Enqueued)
	require.Eventually(t, func() bool {
		st, err := cl.Campaign(ctx, "stack")
		return err == nil && st.Complete
	}, 2*time.Minute, 200*time.Millisecond, "campaign did not finish")
	st, err := cl.Campaign(ctx, "stack")
	require.NoError(t, err)
	require.Equal(t, int64(len(items)-1), st.Cancelled)
	require.Equal(t, int64(1), st.DeadLettered, "the unknown location has no token")

	// Every rule evaluated at least once after the campaign, without error.
	time.Sleep(3 * time.Second)
	require.Eventually(t, func() bool {
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name, Health, LastError string
						LastEvaluation          time.Time
					}
				}
			}
		}
		getJSON(t, promURL+"/api/v1/rules", &r)
		n := 0
		for _, g := range r.Data.Groups {
			for _, rl := range g.Rules {
				require.Empty(t, rl.LastError, rl.Name)
				if rl.Health == "ok" {
					n++
				}
			}
		}
		return n == len(alertRules(t))
	}, 30*time.Second, time.Second, "not every alert rule evaluated ok")

	// Every panel query parses and returns data; every alert expression parses.
	for _, p := range dashboard(t).Panels {
		for _, tg := range p.Targets {
			q := strings.ReplaceAll(tg.Expr, "$__rate_interval", "30s")
			// rate() needs two scrapes in its window: a fast campaign can
			// be over before Prometheus has them.
			require.Eventually(t, func() bool { return len(query(t, promURL, q)) > 0 }, 15*time.Second, 500*time.Millisecond,
				"panel %q: %s returned no data", p.Title, q)
		}
	}
	for _, a := range alertRules(t) {
		query(t, promURL, a.Expr)
	}
	// Workers and intake are up; none of the alerts that mean "broken" fire.
	eventuallyValue(t, promURL, `sum(up{job="ghlcancel-worker"})`, 2)
	eventuallyValue(t, promURL, `sum(up{job="ghlcancel-intake"})`, 1)
	firing := query(t, promURL, `ALERTS{alertstate="firing", alertname=~"GhlcancelWorkerDown|GhlcancelRedisDown|GhlcancelIntakeErrors"}`)
	require.Empty(t, firing)
	eventuallyValue(t, promURL, `sum(ghlcancel_intake_items_total{result="enqueued"})`, float64(len(items)))
	eventuallyValue(t, promURL, `sum(ghlcancel_tasks_processed_total{outcome="cancelled"})`, float64(len(items)-1))
	for _, p := range append([]*proc{sb, intake}, workers...) {
		require.NotContains(t, p.out.String(), key)
	}
}

func getJSON(t *testing.T, u string, out any) {
	t.Helper()
	res, err := http.Get(u)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, "%s: %s", u, b)
	require.NoError(t, json.Unmarshal(b, out))
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// query runs an instant query; a parse error fails the test.
func query(t *testing.T, promURL, q string) []sample {
	t.Helper()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []sample `json:"result"`
		} `json:"data"`
	}
	getJSON(t, promURL+"/api/v1/query?query="+url.QueryEscape(q), &r)
	require.Equal(t, "success", r.Status, q)
	return r.Data.Result
}

// eventuallyValue waits up to 20 s for q's one value to be want. With a
// 1 s scrape interval the scrape timeout is 1 s too: one scrape slowed
// past it on a loaded machine makes up 0, or a series stale, for a moment.
func eventuallyValue(t *testing.T, promURL, q string, want float64) {
	t.Helper()
	var mu sync.Mutex // the condition runs on testify's goroutine
	var last []sample
	ok := assert.Eventually(t, func() bool {
		// Not query: a failed request here is retried, and require must
		// not run off the test's goroutine.
		var r struct {
			Data struct {
				Result []sample `json:"result"`
			} `json:"data"`
		}
		res, err := http.Get(promURL + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return false
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&r) != nil {
			return false
		}
		mu.Lock()
		last = r.Data.Result
		mu.Unlock()
		if len(r.Data.Result) != 1 {
			return false
		}
		var v float64
		_, err = fmt.Sscan(r.Data.Result[0].Value[1].(string), &v)
		return err == nil && v == want
	}, 20*time.Second, 500*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.True(t, ok, "%s: want %v, last answer %v", q, want, last)
}
