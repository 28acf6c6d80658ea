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
		{"codes, none handed back", []any{[]any{int64(0), int64(1)}, []any{}, []any{}, []any{}, []any{}}, true},
		{"one handed back", []any{[]any{int64(3), int64(4)}, []any{int64(1), "c1"}, []any{}, []any{}, []any{}}, true},
		{"no adopt list", []any{[]any{int64(0), int64(1)}}, false},
		{"codes short", []any{[]any{int64(0)}, []any{}, []any{}, []any{}, []any{}}, false},
		{"refused into a dry run", []any{[]any{int64(0), int64(5)}, []any{}, []any{}, []any{}, []any{}}, true},
		{"unknown code", []any{[]any{int64(0), int64(6)}, []any{}, []any{}, []any{}, []any{}}, false},
		{"code 4 without its campaign", []any{[]any{int64(0), int64(4)}, []any{}, []any{}, []any{}, []any{}}, false},
		{"handed back twice", []any{[]any{int64(4), int64(4)}, []any{int64(1), "c1", int64(1), "c1"}, []any{}, []any{}, []any{}}, false},
		{"position out of range", []any{[]any{int64(0), int64(4)}, []any{int64(2), "c1"}, []any{}, []any{}, []any{}}, false},
		{"position not handed back", []any{[]any{int64(4), int64(0)}, []any{int64(1), "c1"}, []any{}, []any{}, []any{}}, false},
		{"empty campaign", []any{[]any{int64(0), int64(4)}, []any{int64(1), ""}, []any{}, []any{}, []any{}}, false},
		{"odd adopt list", []any{[]any{int64(0), int64(4)}, []any{int64(1)}, []any{}, []any{}, []any{}}, false},
		{"no held list", []any{[]any{int64(0), int64(1)}, []any{}}, false},
		{"held elsewhere", []any{[]any{int64(1), int64(2)}, []any{}, []any{int64(0), "k1", int64(1), "k2"}, []any{}, []any{}}, true},
		{"held for an item enqueued", []any{[]any{int64(0), int64(1)}, []any{}, []any{int64(0), "k1"}, []any{}, []any{}}, false},
		{"held twice", []any{[]any{int64(1), int64(1)}, []any{}, []any{int64(0), "k1", int64(0), "k2"}, []any{}, []any{}}, false},
		{"held in no campaign", []any{[]any{int64(1), int64(1)}, []any{}, []any{int64(0), ""}, []any{}, []any{}}, true},
		{"moved", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{int64(1)}, []any{}}, true},
		{"moved, enqueued", []any{[]any{int64(0), int64(1)}, []any{}, []any{}, []any{int64(0)}, []any{}}, false},
		{"moved twice", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{int64(1), int64(1)}, []any{}}, false},
		{"moved out of range", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{int64(2)}, []any{}}, false},
		{"moved, not a position", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{"1"}, []any{}}, false},
		{"no moved list", []any{[]any{int64(1), int64(1)}, []any{}, []any{}}, false},
		{"stays on a slower lane", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{}, []any{int64(0), "bulk"}}, true},
		{"stays, enqueued", []any{[]any{int64(0), int64(1)}, []any{}, []any{}, []any{}, []any{int64(0), "bulk"}}, false},
		{"stays and moved", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{int64(0)}, []any{int64(0), "bulk"}}, false},
		{"stays on an unknown lane", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{}, []any{int64(0), "nope"}}, false},
		{"stays on no lane", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{}, []any{int64(0), ""}}, false},
		{"no stayed list", []any{[]any{int64(1), int64(1)}, []any{}, []any{}, []any{}}, false},
	}
	for _, tt := range tests {
		r, err := parseEnqueueReply(tt.reply, items, idx)
		if !tt.ok {
			require.Error(t, err, tt.name)
			continue
		}
		require.NoError(t, err, tt.name)
		require.Len(t, r.codes, len(idx), tt.name)
		if tt.name == "one handed back" {
			require.Equal(t, []int{2}, r.at, "its position among all items")
			require.Equal(t, "c", r.again[0].MessageID)
			require.Equal(t, "c1", r.again[0].CampaignID)
		}
		if tt.name == "held elsewhere" {
			require.Equal(t, []held{{"k1", true}, {"k2", true}}, r.held)
		}
		if tt.name == "held in no campaign" {
			require.Equal(t, []held{{"", true}, {"", false}}, r.held)
		}
		if tt.name == "moved" {
			require.Equal(t, []bool{false, true}, r.moved)
		}
		if tt.name == "stays on a slower lane" {
			require.Equal(t, []string{"bulk", ""}, r.stayed)
		}
	}
}
