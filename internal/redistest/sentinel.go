package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// MasterName is the Sentinel master name StartSentinel monitors.
const MasterName = "ghlcancel"

// Sentinel is a Redis Sentinel topology on loopback: one master, one
// replica (both with AOF) and three sentinels with a quorum of two, failing
// over one second after the master stops answering.
type Sentinel struct {
	Master, Replica *Server
	Addrs           []string // sentinels
	cmds            []*exec.Cmd
	dir             string
}

// StartSentinel starts the topology and waits until the replica is in sync
// and every sentinel sees the master.
func StartSentinel() (*Sentinel, error) {
	s := &Sentinel{}
	var err error
	if s.Master, err = Start("--appendonly", "yes"); err != nil {
		return nil, err
	}
	_, mport, _ := strings.Cut(s.Master.Addr, ":")
	if s.Replica, err = Start("--appendonly", "yes", "--replicaof", "127.0.0.1", mport); err != nil {
		s.Stop()
		return nil, err
	}
	rc := redis.NewClient(&redis.Options{Addr: s.Replica.Addr, MaxRetries: -1})
	defer rc.Close()
	if err := waitFor(10*time.Second, func() bool {
		info, _ := rc.Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("redistest: replica did not sync: %w", err)
	}
	if s.dir, err = os.MkdirTemp("", "ghlcancel-sentinel-"); err != nil {
		s.Stop()
		return nil, err
	}
	bin, _ := exec.LookPath("redis-server")
	for i := range 3 {
		port, err := freePort()
		if err != nil {
			s.Stop()
			return nil, err
		}
		conf := filepath.Join(s.dir, fmt.Sprintf("sentinel-%d.conf", i))
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
			"sentinel monitor %s 127.0.0.1 %s 2\n"+
			"sentinel down-after-milliseconds %s 1000\n"+
			"sentinel failover-timeout %s 5000\n"+
			"sentinel parallel-syncs %s 1\n",
			port, s.dir, filepath.Join(s.dir, fmt.Sprintf("sentinel-%d.log", i)), MasterName, mport, MasterName, MasterName, MasterName)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			s.Stop()
			return nil, err
		}
		cmd := exec.Command(bin, conf, "--sentinel")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			s.Stop()
			return nil, fmt.Errorf("redistest: start sentinel: %w", err)
		}
		s.cmds = append(s.cmds, cmd)
		s.Addrs = append(s.Addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	for _, a := range s.Addrs {
		if err := waitFor(10*time.Second, func() bool {
			addr, err := sentinelMaster(a)
			return err == nil && strings.HasSuffix(addr, ":"+mport)
		}); err != nil {
			s.Stop()
			return nil, fmt.Errorf("redistest: sentinel %s does not see the master: %w", a, err)
		}
	}
	// Sentinels must also see each other before a failover can reach quorum.
	if err := waitFor(15*time.Second, func() bool {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addrs[0]})
		defer sc.Close()
		res, err := sc.Sentinels(context.Background(), MasterName).Result()
		return err == nil && len(res) == 2
	}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("redistest: sentinels did not discover each other: %w", err)
	}
	return s, nil
}

// URL is the Sentinel URL the commands take (REDIS_URL).
func (s *Sentinel) URL() string {
	return fmt.Sprintf("redis://%s/0?master_name=%s&addr=%s&addr=%s", s.Addrs[0], MasterName, s.Addrs[1], s.Addrs[2])
}

// CurrentMaster asks the first sentinel where the master is now.
func (s *Sentinel) CurrentMaster() string {
	addr, _ := sentinelMaster(s.Addrs[0])
	return addr
}

func sentinelMaster(sentinel string) (string, error) {
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(context.Background(), MasterName).Result()
	if err != nil || len(addr) != 2 {
		return "", fmt.Errorf("no master: %v", err)
	}
	return addr[0] + ":" + addr[1], nil
}

// Stop stops everything.
func (s *Sentinel) Stop() {
	for _, c := range s.cmds {
		_ = c.Process.Kill()
		_, _ = c.Process.Wait()
	}
	for _, srv := range []*Server{s.Master, s.Replica} {
		if srv != nil {
			srv.Stop()
		}
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

func waitFor(limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
