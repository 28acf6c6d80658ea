// Package syncbuf is a goroutine-safe buffer for capturing a command's or a
// subprocess's output in tests while it is still running.
package syncbuf

import (
	"strings"
	"sync"
)

// Buffer is an io.Writer whose String may be called while writes go on.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
