package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

// benchEnv is what every benchmark needs: a Redis (a fresh redis-server on
// a free port unless a URL is given), a client on it, this binary (workers
// run as its child processes) and a scratch folder.
type benchEnv struct {
	rdb      *redis.Client
	redisURL string
	self     string
	dir      string
	cleanup  []func()
}

func newBenchEnv(redisURL string) (*benchEnv, error) {
	e := &benchEnv{redisURL: redisURL}
	if redisURL == "" {
		srv, err := redistest.Start()
		if err != nil {
			return nil, err
		}
		e.cleanup = append(e.cleanup, srv.Stop)
		e.redisURL = "redis://" + srv.Addr + "/0"
	}
	opt, err := redis.ParseURL(e.redisURL)
	if err != nil {
		e.close()
		return nil, err
	}
	opt.PoolSize = 64
	e.rdb = redis.NewClient(opt)
	e.cleanup = append(e.cleanup, func() { _ = e.rdb.Close() })
	if e.self, err = os.Executable(); err != nil {
		e.close()
		return nil, err
	}
	if e.dir, err = os.MkdirTemp("", "ghlcancel-bench-"); err != nil {
		e.close()
		return nil, err
	}
	e.cleanup = append(e.cleanup, func() { _ = os.RemoveAll(e.dir) })
	return e, nil
}

func (e *benchEnv) close() {
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		e.cleanup[i]()
	}
}

// writeTokens writes a GHL_TOKENS_FILE into the scratch folder.
func (e *benchEnv) writeTokens(toks map[string]string) (string, error) {
	b, err := json.Marshal(toks)
	if err != nil {
		return "", err
	}
	path := filepath.Join(e.dir, "tokens.json")
	return path, os.WriteFile(path, b, 0o600)
}

// serveSandbox serves sb on a loopback port and returns its base URL.
func serveSandbox(sb *sandbox.Server) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: sb.Handler()}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// child is this binary run with args as a child process that dies with the
// bench (an interrupted bench leaves no worker or sandbox behind).
func (e *benchEnv) child(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// peakRSS reads a running process's peak resident set (VmHWM) in MB. Not
// wait4's ru_maxrss: Linux carries the parent's peak over a vfork+exec into
// the child's, so a big bench process would show as a big child.
func peakRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/" + strconv.Itoa(pid) + "/status")
}
