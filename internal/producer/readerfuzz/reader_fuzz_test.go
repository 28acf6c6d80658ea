// Package readerfuzz fuzzes producer.Reader in a test binary of its own, without
// the producer tests' Redis server, so fuzz workers start fast.
package readerfuzz

import (
	"bytes"
	"testing"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
)

// FuzzReader: any bytes (binary, huge lines, broken CSV, BOMs, CRLF) end
// the stream in at most one step per byte, number lines strictly upwards,
// and every item handed out carries ids the API accepts.
func FuzzReader(f *testing.F) {
	for _, s := range []string{
		"abc\ndef\n", "message_id,location_id\nm1,l1\n", "\ufeffmessage_id\r\nm1\r\n", "# c\n\n  x  \n",
		"message_id,colour\nm1,red\n", "message_id,send_at\nm1,notatime\n", "\x00\x01\x02\n\xff\xfe",
		"message_id,location_id,kind,campaign_id,send_at\nm1,l1,email,c1,1900000000\nm2,,sms,,\n",
		"a/b\n../x\nhéllo\n", string(bytes.Repeat([]byte("x"), producer.MaxLineBytes+10)) + "\nok\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rd := producer.NewReader(bytes.NewReader(in), producer.Item{Kind: ghl.KindMessage, LocationID: "defaultLoc"})
		last := 0
		for steps := 0; ; steps++ {
			if steps > len(in)+1 {
				t.Fatalf("more lines than bytes: %d steps for %d bytes", steps, len(in))
			}
			l, ok := rd.Next()
			if l.N != 0 && l.N <= last {
				t.Fatalf("line %d after line %d", l.N, last)
			}
			if l.N != 0 {
				last = l.N
			}
			if !ok {
				return
			}
			if l.Err != nil {
				continue
			}
			if ghl.ValidateID(l.Item.MessageID) != nil || ghl.ValidateID(l.Item.LocationID) != nil {
				t.Fatalf("line %d handed out invalid ids %q / %q", l.N, l.Item.MessageID, l.Item.LocationID)
			}
			if l.Item.Kind != ghl.KindMessage && l.Item.Kind != ghl.KindEmail {
				t.Fatalf("line %d: kind %q", l.N, l.Item.Kind)
			}
		}
	})
}
