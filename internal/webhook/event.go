package webhook

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// Event is the part of a HighLevel webhook event a rule reads.
type Event struct {
	Type       string
	LocationID string
	WebhookID  string
	Timestamp  time.Time
	// ContactID is the contact the event is about: contactId
	// (InboundMessage), id (ContactDndUpdate, ContactDelete) or
	// appointment.contactId (AppointmentCreate).
	ContactID   string
	MessageType string // InboundMessage
	Direction   string // InboundMessage
	// DND is ContactDndUpdate's dnd; DNDActive the channels whose
	// dndSettings status is "active" or "permanent".
	DND       bool
	DNDActive []string
	// CompanyID of an INSTALL or UNINSTALL.
	CompanyID string
}

type rawEvent struct {
	Type        string          `json:"type"`
	LocationID  string          `json:"locationId"`
	Timestamp   json.RawMessage `json:"timestamp"`
	WebhookID   string          `json:"webhookId"`
	CompanyID   string          `json:"companyId"`
	ContactID   string          `json:"contactId"`
	ID          string          `json:"id"`
	MessageType string          `json:"messageType"`
	Direction   string          `json:"direction"`
	DND         bool            `json:"dnd"`
	DNDSettings map[string]struct {
		Status string `json:"status"`
	} `json:"dndSettings"`
	Appointment *struct {
		ContactID string `json:"contactId"`
	} `json:"appointment"`
}

// ParseEvent decodes an event. It needs type and timestamp (RFC 3339, or
// unix seconds or milliseconds); the location and contact are checked by
// Validate, for the events a rule accepts.
func ParseEvent(body []byte) (Event, error) {
	var r rawEvent
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&r); err != nil {
		return Event{}, fmt.Errorf("body is not a JSON event: %w", err)
	}
	if dec.More() {
		return Event{}, errors.New("body has data after the JSON object")
	}
	ev := Event{Type: r.Type, LocationID: r.LocationID, WebhookID: r.WebhookID, MessageType: r.MessageType,
		Direction: r.Direction, DND: r.DND, CompanyID: r.CompanyID}
	if ev.Type == "" {
		return Event{}, errors.New("event has no type")
	}
	ts, err := parseTimestamp(r.Timestamp)
	if err != nil {
		return Event{}, err
	}
	ev.Timestamp = ts
	switch ev.Type {
	case EventInboundMessage:
		ev.ContactID = r.ContactID
	case EventContactDndUpdate, EventContactDelete:
		ev.ContactID = r.ID
	case EventAppointmentCreate:
		if r.Appointment != nil {
			ev.ContactID = r.Appointment.ContactID
		}
	}
	for ch, s := range r.DNDSettings {
		// HighLevel's DndSettingSchema.status: active, inactive, permanent.
		if strings.EqualFold(s.Status, "active") || strings.EqualFold(s.Status, "permanent") {
			ev.DNDActive = append(ev.DNDActive, ch)
		}
	}
	slices.Sort(ev.DNDActive)
	return ev, nil
}

func parseTimestamp(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, errors.New("event has no timestamp (HighLevel signs one into every event; replays cannot be refused without it)")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t, nil
		}
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return unixAny(n)
		}
		return time.Time{}, fmt.Errorf("timestamp %q: want RFC 3339", s)
	}
	var n float64
	if json.Unmarshal(raw, &n) == nil && n > 0 && n < 1e18 {
		return unixAny(int64(n))
	}
	return time.Time{}, fmt.Errorf("timestamp %s: want RFC 3339 or unix time", raw)
}

// unixAny reads seconds or, past 10^11, milliseconds; past 10^14 (micro-
// or nanoseconds) it is an error rather than a date far in the future.
func unixAny(n int64) (time.Time, error) {
	switch {
	case n > 1e14:
		return time.Time{}, fmt.Errorf("timestamp %d: want unix seconds or milliseconds", n)
	case n > 1e11:
		return time.UnixMilli(n), nil
	}
	return time.Unix(n, 0), nil
}

// Decision is what a rule makes of an event.
type Decision struct {
	// Result: accepted (sweep Channel for ContactID), no_rule (the event
	// type is not in the location's rule) or ignored (the rule names it,
	// but this event asks for nothing: an outbound message, a message type
	// left out, DND turned off or on for channels that are not swept).
	Result  string
	Channel string
	Why     string
}

// Results of an event (the metric's result label, with the signature
// reasons, replay, invalid and unavailable).
const (
	ResultAccepted    = "accepted"
	ResultIgnored     = "ignored"
	ResultNoRule      = "no_rule"
	ResultReplay      = "replay"
	ResultInvalid     = "invalid"
	ResultUnavailable = "unavailable"
)

// Decide applies the location's rule to an event.
func (r *Rules) Decide(ev Event) Decision {
	rule := r.For(ev.LocationID)
	types, ok := rule.Events[ev.Type]
	if !ok {
		return Decision{Result: ResultNoRule, Why: ev.Type + " is not in " + cmp.Or(rule.EventsFrom, envEvents) + " for this location"}
	}
	ch := rule.Channel
	switch ev.Type {
	case EventInboundMessage:
		if ev.Direction != "" && !strings.EqualFold(ev.Direction, "inbound") {
			return Decision{Result: ResultIgnored, Why: "direction " + ev.Direction}
		}
		if len(types) > 0 && !slices.Contains(types, MessageType(ev.MessageType)) {
			return Decision{Result: ResultIgnored, Why: "message type " + ev.MessageType + " is not in the rule"}
		}
	case EventContactDndUpdate:
		dnd := dndChannel(ev)
		if dnd == "" {
			return Decision{Result: ResultIgnored, Why: "DND is not on for SMS or email"}
		}
		if ch = intersect(ch, dnd); ch == "" {
			return Decision{Result: ResultIgnored, Why: "DND is on for " + dnd + ", which " + cmp.Or(rule.ChannelFrom, envChannels) + " does not sweep"}
		}
	}
	return Decision{Result: ResultAccepted, Channel: ch}
}

// dndChannel is the channel a DND update shuts: all when dnd is on for
// every channel, else SMS and/or Email by their dndSettings.
func dndChannel(ev Event) string {
	if ev.DND {
		return tasks.ChannelAll
	}
	sms, email := slices.Contains(ev.DNDActive, "SMS"), slices.Contains(ev.DNDActive, "Email")
	switch {
	case sms && email:
		return tasks.ChannelAll
	case sms:
		return tasks.ChannelSMS
	case email:
		return tasks.ChannelEmail
	}
	return ""
}

// intersect is the channels both a and b cover ("" when none).
func intersect(a, b string) string {
	switch {
	case a == tasks.ChannelAll:
		return b
	case b == tasks.ChannelAll || a == b:
		return a
	}
	return ""
}

// Validate checks the ids a sweep needs.
func (ev Event) Validate() error {
	if err := ghl.ValidateID(ev.LocationID); err != nil {
		return fmt.Errorf("locationId: %w", err)
	}
	if ev.ContactID == "" {
		return fmt.Errorf("%s has no contact id", ev.Type)
	}
	if err := ghl.ValidateID(ev.ContactID); err != nil {
		return fmt.Errorf("contact id: %w", err)
	}
	return nil
}
