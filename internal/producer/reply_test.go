package producer

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestParseEnqueueReply: a reply of any other shape than the script's
// rejects the batch instead of reporting items from it.
func TestParseEnqueueReply(t *testing.T) {
	t.Parallel()
	items := []Item{{MessageID: "a"}, {MessageID: "b"}, {MessageID: "c"}}
	idx := []int{0, 2} // item 1 was rejected before the script
	tests := []struct {
		name  string
		reply []any
		ok    bool
	}{
		{"codes, none handed back", []any{[]any{int64(0), int64(1)}, []any{}}, true},
		{"one handed back", []any{[]any{int64(3), int64(4)}, []any{int64(1), "c1"}}, true},
		{"no adopt list", []any{[]any{int64(0), int64(1)}}, false},
		{"codes short", []any{[]any{int64(0)}, []any{}}, false},
		{"unknown code", []any{[]any{int64(0), int64(5)}, []any{}}, false},
		{"code 4 without its campaign", []any{[]any{int64(0), int64(4)}, []any{}}, false},
		{"handed back twice", []any{[]any{int64(4), int64(4)}, []any{int64(1), "c1", int64(1), "c1"}}, false},
		{"position out of range", []any{[]any{int64(0), int64(4)}, []any{int64(2), "c1"}}, false},
		{"position not handed back", []any{[]any{int64(4), int64(0)}, []any{int64(1), "c1"}}, false},
		{"empty campaign", []any{[]any{int64(0), int64(4)}, []any{int64(1), ""}}, false},
		{"odd adopt list", []any{[]any{int64(0), int64(4)}, []any{int64(1)}}, false},
	}
	for _, tt := range tests {
		codes, again, at, err := parseEnqueueReply(tt.reply, items, idx)
		if !tt.ok {
			require.Error(t, err, tt.name)
			continue
		}
		require.NoError(t, err, tt.name)
		require.Len(t, codes, len(idx), tt.name)
		if tt.name == "one handed back" {
			require.Equal(t, []int{2}, at, "its position among all items")
			require.Equal(t, "c", again[0].MessageID)
			require.Equal(t, "c1", again[0].CampaignID)
		}
	}
}
