package redistest

import (
	"os/exec"
	"testing"
	"time"
)

// TestWaitReadyRefusesAnotherServer: two test binaries can be given the
// same free port; the second's redis-server then fails to bind, and the
// first's answered its readiness check, so both flushed each other's
// databases (a flaky test in CI). The server answering must be the one
// started.
func TestWaitReadyRefusesAnotherServer(t *testing.T) {
	first, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	if err := first.waitReady(5 * time.Second); err != nil {
		t.Fatalf("its own server: %v", err)
	}
	other := exec.Command("sleep", "30") // stands in for a server that could not bind
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _, _ = other.Process.Wait() }()
	s := &Server{Addr: first.Addr, cmd: other}
	if err := s.waitReady(5 * time.Second); err == nil {
		t.Fatal("another binary's server was taken for this one")
	}
}
