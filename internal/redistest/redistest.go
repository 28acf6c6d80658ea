// Package redistest starts real redis-server processes for tests: one per
// test binary on a free loopback port, with a fresh database per test.
// Nothing here is a mock; tests run against the same server binary
// production uses.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Databases is how many logical databases each server has; each test that
// calls Client or URL takes the next one.
const Databases = 1024

// Server is a running redis-server.
type Server struct {
	Addr   string
	Dir    string
	cmd    *exec.Cmd
	nextDB atomic.Int32
	args   []string
}

// Start launches redis-server on a free port with no persistence, plus any
// extra arguments (e.g. "--appendonly", "yes").
func Start(extra ...string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redistest: redis-server is not installed: run `apt-get install -y redis-server`, " +
			"or use ./scripts/test, which installs it")
	}
	dir, err := os.MkdirTemp("", "ghlcancel-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir}
		s.args = append([]string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--databases", strconv.Itoa(Databases), "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"),
			"--maxclients", "10000",
			// The production recommendation (README, "Redis"): asynq's task
			// hashes stay listpack-encoded, 395 instead of 635 bytes a task.
			"--hash-max-listpack-value", "512",
		}, extra...)
		s.cmd = exec.Command(bin, s.args...)
		// Die with the test binary even if it is killed.
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("redistest: start redis-server: %w", err)
		}
		if lastErr = s.waitReady(5 * time.Second); lastErr == nil {
			s.nextDB.Store(0)
			return s, nil
		}
		_ = s.cmd.Process.Kill()
		_, _ = s.cmd.Process.Wait()
	}
	return nil, fmt.Errorf("redistest: redis-server did not come up: %w (log in %s)", lastErr, dir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits until the server answers, and checks that the server
// answering is this one: another test binary may have been given the same
// free port a moment earlier (the port is free between freePort and the
// bind), and its server would answer for ours, whose bind failed; both
// binaries would then flush each other's databases.
func (s *Server) waitReady(limit time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(limit)
	for {
		info, err := c.Info(context.Background(), "server").Result()
		if err == nil {
			if pid := infoField(info, "process_id"); pid != strconv.Itoa(s.cmd.Process.Pid) {
				return fmt.Errorf("port %s is served by another redis-server (pid %s), not the one started (pid %d)", s.Addr, pid, s.cmd.Process.Pid)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// infoField reads one field of an INFO answer.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// Stop kills the server and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _, _ = s.cmd.Process.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-done
		}
	}
	_ = os.RemoveAll(s.Dir)
}

// Kill stops the server abruptly (SIGKILL), keeping its directory, so that
// Restart can bring it back with whatever it persisted.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	_, _ = s.cmd.Process.Wait()
}

// Restart starts the server again on the same port and directory.
func (s *Server) Restart() error {
	s.cmd = exec.Command(s.cmd.Path, s.args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	return s.waitReady(10 * time.Second)
}

// DB reserves a fresh, flushed database number for one test.
func (s *Server) DB(t testing.TB) int {
	t.Helper()
	db := int(s.nextDB.Add(1))
	if db >= Databases {
		t.Fatalf("redistest: more than %d databases requested from one server", Databases-1)
	}
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DB: db})
	defer c.Close()
	if err := c.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("redistest: flush db %d: %v", db, err)
	}
	return db
}

// URL returns redis://addr/db for a fresh database.
func (s *Server) URL(t testing.TB) string {
	return fmt.Sprintf("redis://%s/%d", s.Addr, s.DB(t))
}

// Client returns a client on a fresh database, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DB: s.DB(t), PoolSize: 256})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ClientFor returns a client for a redis:// URL, closed when the test ends.
func ClientFor(t testing.TB, url string) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Main is a TestMain body: it starts a server into *srv, runs the tests and
// stops the server.
func Main(m *testing.M, srv **Server) {
	s, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	*srv = s
	code := m.Run()
	s.Stop()
	os.Exit(code)
}
