package sandbox

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Defaults for the conversation messages a location holds.
const (
	DefaultContact      = "sandboxContact000001"
	DefaultConversation = "sandboxConversation1"
	// CursorTTLDefault: HighLevel's rendered docs say an export cursor lives
	// 2 minutes after the last request.
	CursorTTLDefault = 2 * time.Minute
)

// MessageSpec describes a conversation message to add to a location.
type MessageSpec struct {
	Contact      string // defaults to DefaultContact
	Conversation string // defaults to one conversation per contact
	Email        bool
	// Status is scheduled (the default), sent, delivered, failed...
	Status string
	// Source is workflow (the default), bulk_actions, campaign, api or app.
	Source string
}

// Added is a message AddMessages created: ID is its conversation message id
// (what GET message and the export show); CancelID is what the cancel
// takes: the same id for an SMS, the emailMessageId for an email.
type Added struct {
	ID, CancelID string
	Email        bool
	Contact      string
	Scheduled    bool
}

// MixedSpecs is a location as the sweep tests know it: sms SMS of which the
// first smsScheduled are scheduled (the rest sent), then emails emails of
// which the first emailsScheduled are scheduled (the rest delivered), spread
// round-robin over contacts contact00, contact01...
func MixedSpecs(sms, smsScheduled, emails, emailsScheduled, contacts int) []MessageSpec {
	specs := make([]MessageSpec, 0, sms+emails)
	for i := range sms + emails {
		email, st := i >= sms, StatusScheduled
		switch {
		case !email && i >= smsScheduled:
			st = StatusSent
		case email && i-sms >= emailsScheduled:
			st = "delivered"
		}
		specs = append(specs, MessageSpec{Contact: fmt.Sprintf("contact%02d", i%contacts), Email: email, Status: st})
	}
	return specs
}

// AddMessages adds conversation messages to a location, in order.
func (s *Server) AddMessages(location string, specs ...MessageSpec) []Added {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Added, len(specs))
	for i, sp := range specs {
		contact := cmp.Or(sp.Contact, DefaultContact)
		m := &message{id: NewID(), location: location, email: sp.Email, status: cmp.Or(sp.Status, StatusScheduled),
			contact: contact, conversation: cmp.Or(sp.Conversation, "conv"+contact), source: cmp.Or(sp.Source, "workflow")}
		s.addLocked(m)
		out[i] = Added{ID: m.convID, CancelID: m.id, Email: m.email, Contact: contact, Scheduled: m.status == StatusScheduled}
	}
	return out
}

// SetCursorTTL changes how long an export cursor lives (tests expire them).
func (s *Server) SetCursorTTL(d time.Duration) {
	s.mu.Lock()
	s.cursorTTL = d
	s.mu.Unlock()
}

// ExpireCursors makes every export cursor issued so far invalid, as if
// they had outlived their 2 minutes.
func (s *Server) ExpireCursors() {
	s.mu.Lock()
	s.cursorGen++
	s.mu.Unlock()
}

// ExportCalls returns how many export pages were served.
func (s *Server) ExportCalls() int64 { return s.stats.exports.Load() }

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// messageDTOLocked is a GetMessageResponseDto; s.mu is held.
func (s *Server) messageDTOLocked(m *message) map[string]any {
	mt, typ := "TYPE_SMS", 2
	dto := map[string]any{"id": m.convID, "locationId": m.location, "contactId": m.contact, "conversationId": m.conversation,
		"dateAdded": stamp(m.added), "direction": "outbound", "contentType": "text/plain", "status": s.statusLocked(m),
		"source": m.source, "body": "scheduled message"}
	if m.email {
		mt, typ = "TYPE_EMAIL", 3
		dto["contentType"] = "text/html"
		dto["meta"] = map[string]any{"email": map[string]any{"messageIds": []string{m.id}}}
	}
	dto["type"], dto["messageType"] = typ, mt
	return dto
}

// cursor is the export's paging position: the creation order of the last
// message served, when it was issued, and the query it belongs to.
type cursor struct {
	After  int64  `json:"a"`
	Issued int64  `json:"t"` // unix ms
	Query  string `json:"q"`
	Gen    int64  `json:"g"`
}

// export serves GET /conversations/messages/export with HighLevel's rules:
// locationId required (and the token's), limit 10..500 (default 100),
// no status filter, email only with channel=Email (no channel: every
// non-email message), contactId / conversationId / startDate / endDate
// filters, sortOrder asc or desc (default desc) by creation, a cursor that
// expires CursorTTL after it was issued (400), nextCursor absent on the last
// page.
func (s *Server) export(w http.ResponseWriter, r *http.Request, location string) {
	s.stats.exports.Add(1)
	q := r.URL.Query()
	bad := func(msg string) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": msg, "error": "Bad Request"})
	}
	if q.Get("locationId") == "" {
		bad("locationId should not be empty")
		return
	}
	if q.Get("locationId") != location {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": "The token does not have access to this location.", "error": "Unauthorized"})
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 10 || n > 500 {
			bad("limit must be a number between 10 and 500")
			return
		}
		limit = n
	}
	var since, until time.Time
	for _, d := range []struct {
		name string
		t    *time.Time
	}{{"startDate", &since}, {"endDate", &until}} {
		if v := q.Get(d.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				bad(d.name + " must be an ISO 8601 date")
				return
			}
			*d.t = t
		}
	}
	desc := q.Get("sortOrder") != "asc"
	query := q.Get("channel") + "|" + q.Get("contactId") + "|" + q.Get("conversationId") + "|" + q.Get("startDate") + "|" +
		q.Get("endDate") + "|" + q.Get("sortOrder")
	now := s.now()
	var after int64 = -1
	s.mu.RLock()
	ttl, gen := cmp.Or(s.cursorTTL, CursorTTLDefault), s.cursorGen
	s.mu.RUnlock()
	if c := q.Get("cursor"); c != "" {
		var cur cursor
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || json.Unmarshal(b, &cur) != nil || cur.Query != query {
			bad("cursor is invalid")
			return
		}
		if now.Sub(time.UnixMilli(cur.Issued)) > ttl || cur.Gen != gen {
			bad("cursor expired; start again without a cursor")
			return
		}
		after = cur.After
	}
	channel, contact, conversation := q.Get("channel"), q.Get("contactId"), q.Get("conversationId")
	if channel != "" && channel != "SMS" && channel != "Email" {
		channel = "none" // no calls or social messages here
	}
	match := func(m *message) bool {
		if channel == "none" || m.email != (channel == "Email") {
			return false
		}
		return (contact == "" || contact == m.contact) && (conversation == "" || conversation == m.conversation) &&
			(since.IsZero() || !m.added.Before(since)) && (until.IsZero() || !m.added.After(until))
	}
	s.mu.RLock()
	all := s.byLoc[location]
	total := 0
	var page []map[string]any
	last := int64(-1)
	more := false
	for i := range all {
		m := all[i]
		if desc {
			m = all[len(all)-1-i]
		}
		if !match(m) {
			continue
		}
		total++
		if after >= 0 && ((!desc && m.seq <= after) || (desc && m.seq >= after)) {
			continue
		}
		if len(page) == limit {
			more = true
			continue
		}
		page = append(page, s.messageDTOLocked(m))
		last = m.seq
	}
	s.mu.RUnlock()
	if page == nil {
		page = []map[string]any{}
	}
	body := map[string]any{"messages": page, "total": total}
	if more {
		b, _ := json.Marshal(cursor{After: last, Issued: now.UnixMilli(), Query: query, Gen: gen})
		body["nextCursor"] = base64.RawURLEncoding.EncodeToString(b)
	}
	writeJSON(w, http.StatusOK, body)
}
