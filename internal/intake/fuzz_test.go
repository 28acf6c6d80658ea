package intake

import (
	"testing"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// FuzzDecodeRequest: any body is either refused with a code and a message,
// or yields at least one raw item; every item decodeItem accepts has ids
// the API accepts, a known kind and a lane; every refused one says where.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"message_id":"m1","location_id":"l1"}`,
		`{"items":[{"message_id":"m1","location_id":"l1","kind":"email","send_at":"2026-11-27T18:00:00Z","urgent":true}],"lane":"bulk"}`,
		`{"items":[{"message_id":"a/b","location_id":"l"},"x",{"mesage_id":"m"}],"partial":true}`,
		`{"items":[{"message_id":"m","location_id":"l","send_at":-5}]}`,
		`{"items":[{"message_id":"m","location_id":"l","send_at":"0001-01-01T00:00:00Z"}]}`,
		`{"items":[`, `null`, `[]`, `{"items":{}}`, `{"message_id":1e400}`, "\x00\xff",
	} {
		f.Add([]byte(s))
	}
	s := &Server{}
	f.Fuzz(func(t *testing.T, body []byte) {
		raw, opts, apiErr := s.parseRequest(body)
		lane := opts.lane
		if apiErr != nil {
			if apiErr.Code == "" || apiErr.Message == "" {
				t.Fatalf("error without code or message: %+v", apiErr)
			}
			return
		}
		if len(raw) == 0 {
			t.Fatal("accepted a request without items")
		}
		for i, b := range raw {
			it, ie := decodeItem(i, b, lane)
			if ie != nil {
				if ie.Index != i || ie.Code == "" || ie.Message == "" {
					t.Fatalf("item error %+v for item %d", ie, i)
				}
				continue
			}
			if ghl.ValidateID(it.MessageID) != nil || ghl.ValidateID(it.LocationID) != nil {
				t.Fatalf("accepted invalid ids %q / %q", it.MessageID, it.LocationID)
			}
			if it.Kind != ghl.KindMessage && it.Kind != ghl.KindEmail {
				t.Fatalf("kind %q", it.Kind)
			}
			if it.Queue != tasks.QueueUrgent && it.Queue != tasks.QueueDefault && it.Queue != tasks.QueueBulk {
				t.Fatalf("lane %q", it.Queue)
			}
			if it.SendAt < 0 {
				t.Fatalf("send_at %d", it.SendAt)
			}
		}
	})
}
