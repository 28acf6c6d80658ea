// Package webhook receives HighLevel's signed webhook events and turns the
// ones a rule names into sweeps: "when a contact replies, cancel what is
// still scheduled for them". Signatures are checked by its signature
// package.
package webhook

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// Event types that can cancel a contact's scheduled messages.
const (
	EventInboundMessage    = "InboundMessage"
	EventContactDndUpdate  = "ContactDndUpdate"
	EventAppointmentCreate = "AppointmentCreate"
	EventContactDelete     = "ContactDelete"
	// App lifecycle events: always handled (the agency's registry), not
	// rules.
	EventInstall   = "INSTALL"
	EventUninstall = "UNINSTALL"
)

// Supported lists the event types a rule may name.
var Supported = []string{EventInboundMessage, EventContactDndUpdate, EventAppointmentCreate, EventContactDelete}

// known are the event types HighLevel documents, for the metric's event
// label (anything else is "other", so the label stays bounded).
var known = append([]string{"OutboundMessage", "INSTALL", "UNINSTALL", "ContactCreate", "ContactUpdate",
	"AppointmentUpdate", "AppointmentDelete", "ContactTagUpdate"}, Supported...)

// EventLabel is the metric label of an event type.
func EventLabel(t string) string {
	if slices.Contains(known, t) {
		return t
	}
	return "other"
}

// LaneFor is the lane of the sweep an event starts and of the cancels it
// queues. An opt-out (ContactDndUpdate) goes on the urgent lane: a message
// to a contact who asked for no more is the one that must not go out, the
// event names one contact, and at a location parked for its daily budget
// only urgent cancels spend the reserve. Its sweep also moves the
// contact's cancels a campaign queued on a slower lane (producer:
// Result.Moved). Replies, bookings and deleted contacts go on the default
// lane.
func LaneFor(event string) string {
	if event == EventContactDndUpdate {
		return tasks.QueueUrgent
	}
	return tasks.QueueDefault
}

// Rule says which events cancel what, for one location or by default.
type Rule struct {
	// Events maps an event type to the message types it is limited to
	// (InboundMessage only: "sms", "email", "call"...; empty: any).
	Events map[string][]string
	// Channel of the scheduled messages cancelled: sms, email or all.
	Channel string
	// EventsFrom and ChannelFrom name where Events and Channel came from
	// (AUTO_CANCEL_EVENTS, or the location's entry in the rules file), for
	// the reasons an event is not acted on.
	EventsFrom, ChannelFrom string
}

// Rules are the default rule and per-location overrides.
type Rules struct {
	Default   Rule
	Locations map[string]Rule
}

// For returns the rule of a location.
func (r *Rules) For(location string) Rule {
	if l, ok := r.Locations[location]; ok {
		return l
	}
	return r.Default
}

// Enabled reports whether any event can cancel anything.
func (r *Rules) Enabled() bool {
	if len(r.Default.Events) > 0 {
		return true
	}
	for _, l := range r.Locations {
		if len(l.Events) > 0 {
			return true
		}
	}
	return false
}

// ParseEvents reads an AUTO_CANCEL_EVENTS value: comma-separated event
// types, InboundMessage optionally limited to message types with
// "InboundMessage:sms+email".
func ParseEvents(s string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if err := addEvent(out, f); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// MessageTypes are the InboundMessage message types a rule may name, in
// MessageType's spelling: the official spec's message types (SMS, RCS,
// Email, WhatsApp, GMB, IG, FB, Custom, WebChat, Live_Chat, Call, IVR_Call,
// Campaign_Call, Campaign_VoiceMail, TIKTOK, ALL_IN_ONE_CHAT,
// FORM_SUBMISSION) and the event page's Voicemail. A type outside the list
// is a typo until shown otherwise: "emial" would silently leave every
// email reply uncancelled.
var MessageTypes = []string{"sms", "rcs", "email", "whatsapp", "gmb", "ig", "fb", "custom", "webchat", "live_chat",
	"call", "voicemail", "ivr_call", "campaign_call", "campaign_voicemail", "tiktok", "all_in_one_chat", "form_submission"}

// typeAliases are other spellings HighLevel uses (the event page's "Live
// Chat", TYPE_FACEBOOK...) or people write.
var typeAliases = map[string]string{"facebook": "fb", "instagram": "ig", "livechat": "live_chat",
	"web_chat": "webchat", "voice_mail": "voicemail"}

// MessageType is one spelling of a message type for rules and events alike:
// lower case, words joined by "_", no TYPE_ prefix, aliases resolved
// ("Live Chat", "TYPE_LIVE_CHAT" and "live_chat" are one type).
func MessageType(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.NewReplacer(" ", "_", "-", "_").Replace(s)
	s = strings.TrimPrefix(s, "type_")
	if a, ok := typeAliases[s]; ok {
		return a
	}
	return s
}

func addEvent(out map[string][]string, f string) error {
	name, types, limited := strings.Cut(f, ":")
	i := slices.IndexFunc(Supported, func(s string) bool { return strings.EqualFold(s, name) })
	if i < 0 {
		hint := ""
		if t := MessageType(name); t != "" && slices.Contains(MessageTypes, t) && !limited {
			// InboundMessage:sms,email: the comma split the types.
			hint = fmt.Sprintf(" (%q is a message type: join an event's message types with +, as InboundMessage:sms+%s)", name, t)
		}
		return fmt.Errorf("event %q: want one of %s%s", name, strings.Join(Supported, ", "), hint)
	}
	name = Supported[i]
	if !limited {
		out[name] = nil
		return nil
	}
	if name != EventInboundMessage {
		return fmt.Errorf("event %q: only InboundMessage takes message types (InboundMessage:sms+email)", f)
	}
	for _, t := range strings.Split(types, "+") {
		if t = MessageType(t); t == "" {
			return fmt.Errorf("event %q: empty message type", f)
		}
		if !slices.Contains(MessageTypes, t) {
			return fmt.Errorf("event %q: unknown message type %q: want one of %s", f, t, strings.Join(MessageTypes, ", "))
		}
		out[name] = append(out[name], t)
	}
	return nil
}

// ParseChannel reads an AUTO_CANCEL_CHANNELS value (empty: all).
func ParseChannel(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	switch s {
	case "":
		return tasks.ChannelAll, nil
	case tasks.ChannelSMS, tasks.ChannelEmail, tasks.ChannelAll:
		return s, nil
	}
	return "", fmt.Errorf("channels %q: want sms, email or all", s)
}

// rulesFile is AUTO_CANCEL_RULES_FILE's shape:
//
//	{"locations": {"LOCATION_ID": {"events": ["InboundMessage:sms"], "channels": "sms"}}}
type rulesFile struct {
	Locations map[string]struct {
		// Events: nil (no "events" key) takes AUTO_CANCEL_EVENTS; an
		// empty list turns the location off.
		Events   *[]string `json:"events"`
		Channels string    `json:"channels"`
	} `json:"locations"`
}

// LoadRules builds the rules from the environment's values and an optional
// rules file, whose location entries replace the default for that location
// (an entry without "events" or "channels" takes the default's: an entry
// that only narrows the channels used to turn the location's events off).
const (
	envEvents   = "AUTO_CANCEL_EVENTS"
	envChannels = "AUTO_CANCEL_CHANNELS"
)

func LoadRules(events, channels, file string) (*Rules, error) {
	ev, err := ParseEvents(events)
	if err != nil {
		return nil, fmt.Errorf("AUTO_CANCEL_EVENTS: %w", err)
	}
	ch, err := ParseChannel(channels)
	if err != nil {
		return nil, fmt.Errorf("AUTO_CANCEL_CHANNELS: %w", err)
	}
	r := &Rules{Default: Rule{Events: ev, Channel: ch, EventsFrom: envEvents, ChannelFrom: envChannels}, Locations: map[string]Rule{}}
	if file == "" {
		return r, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("AUTO_CANCEL_RULES_FILE: %w", err)
	}
	var rf rulesFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rf); err != nil {
		return nil, fmt.Errorf("AUTO_CANCEL_RULES_FILE %s: %w (want {\"locations\": {\"LOCATION_ID\": {\"events\": [...], \"channels\": \"sms\"}}})", file, err)
	}
	for loc, l := range rf.Locations {
		if err := ghl.ValidateID(loc); err != nil {
			return nil, fmt.Errorf("AUTO_CANCEL_RULES_FILE %s: location %q: %w", file, loc, err)
		}
		entry := "this location's entry in AUTO_CANCEL_RULES_FILE"
		rule := Rule{Events: ev, Channel: ch, EventsFrom: envEvents, ChannelFrom: envChannels}
		if l.Events != nil {
			rule.Events, rule.EventsFrom = map[string][]string{}, entry
			for _, e := range *l.Events {
				if err := addEvent(rule.Events, strings.TrimSpace(e)); err != nil {
					return nil, fmt.Errorf("AUTO_CANCEL_RULES_FILE %s: location %s: %w", file, loc, err)
				}
			}
		}
		if l.Channels != "" {
			if rule.Channel, err = ParseChannel(l.Channels); err != nil {
				return nil, fmt.Errorf("AUTO_CANCEL_RULES_FILE %s: location %s: %w", file, loc, err)
			}
			rule.ChannelFrom = entry
		}
		r.Locations[loc] = rule
	}
	return r, nil
}
