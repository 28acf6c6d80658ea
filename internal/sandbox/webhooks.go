package sandbox

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

// Webhook signing schemes for Emit.
const (
	SchemeEd25519 = "ed25519" // X-GHL-Signature
	SchemeRSA     = "rsa"     // X-WH-Signature (legacy)
	SchemeBoth    = "both"    // both headers, as HighLevel sent during the migration
	SchemeNone    = "none"    // unsigned
)

// webhookKeys are the sandbox's own test key pairs, made on first use.
type webhookKeys struct {
	once   sync.Once
	signer *signature.Signer
	err    error
}

// Signer returns the sandbox's webhook signer (its Ed25519 and RSA test
// key pairs, generated once per sandbox).
func (s *Server) Signer() (*signature.Signer, error) {
	k := &s.whKeys
	k.once.Do(func() {
		_, ed, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			k.err = err
			return
		}
		r, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			k.err = err
			return
		}
		k.signer = &signature.Signer{Ed: ed, RSA: r}
	})
	return k.signer, k.err
}

// Verifier returns a verifier of the sandbox's own signatures (both
// schemes accepted), as an intake configured with its public keys has.
func (s *Server) Verifier() (*signature.Verifier, error) {
	sg, err := s.Signer()
	if err != nil {
		return nil, err
	}
	ed, rs := sg.PublicKeys()
	return signature.NewVerifier(ed, rs, true)
}

// EventSpec is a webhook event the sandbox builds.
type EventSpec struct {
	Type     string `json:"type"` // InboundMessage, ContactDndUpdate, AppointmentCreate, ContactDelete, INSTALL, UNINSTALL, ...
	Location string `json:"location_id"`
	Contact  string `json:"contact_id"`
	// Company of an INSTALL or UNINSTALL; left out of the body when empty
	// (HighLevel omits it for installs to future locations).
	Company string `json:"company_id,omitempty"`
	// AppID of an INSTALL or UNINSTALL. Defaults to Config.AppID.
	AppID string `json:"app_id,omitempty"`
	// MessageType of an InboundMessage (SMS, Email, CALL...). Default SMS.
	MessageType string `json:"message_type,omitempty"`
	// DND of a ContactDndUpdate: "all" (dnd true) or channels whose
	// dndSettings status is active (SMS, Email, WhatsApp...).
	DND []string `json:"dnd,omitempty"`
	// WebhookID defaults to a fresh id; Timestamp to now.
	WebhookID string    `json:"webhook_id,omitempty"`
	Timestamp time.Time `json:"timestamp,omitzero"`
}

// EventBody renders an event as HighLevel sends it.
func (s *Server) EventBody(e EventSpec) []byte {
	if e.WebhookID == "" {
		e.WebhookID = "wh" + NewID()
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = s.now()
	}
	m := map[string]any{"type": e.Type, "locationId": e.Location, "webhookId": e.WebhookID,
		"timestamp": e.Timestamp.UTC().Format("2006-01-02T15:04:05.000Z")}
	switch e.Type {
	case "InboundMessage", "OutboundMessage":
		mt := e.MessageType
		if mt == "" {
			mt = "SMS"
		}
		dir := "inbound"
		if e.Type == "OutboundMessage" {
			dir = "outbound"
		}
		m["contactId"], m["conversationId"], m["messageType"], m["direction"] = e.Contact, "conv"+e.Contact, mt, dir
		m["messageId"], m["body"], m["dateAdded"], m["status"] = NewID(), "STOP", stamp(e.Timestamp), "delivered"
	case "ContactDndUpdate":
		m["id"] = e.Contact
		settings := map[string]any{}
		for _, ch := range []string{"SMS", "Email", "Call", "GMB", "FB", "WhatsApp"} {
			settings[ch] = map[string]any{"status": "inactive", "message": "", "code": ""}
		}
		for _, ch := range e.DND {
			if ch == "all" {
				m["dnd"] = true
				continue
			}
			settings[ch] = map[string]any{"status": "active", "message": "opted out", "code": "101"}
		}
		if m["dnd"] == nil {
			m["dnd"] = false
		}
		m["dndSettings"] = settings
	case "ContactDelete":
		m["id"], m["dnd"] = e.Contact, false
	case "INSTALL", "UNINSTALL":
		s.appEvent(m, e)
	case "AppointmentCreate":
		m["appointment"] = map[string]any{"id": NewID(), "contactId": e.Contact, "calendarId": "cal" + e.Location,
			"appointmentStatus": "confirmed", "startTime": stamp(e.Timestamp.Add(24 * time.Hour))}
	}
	b, _ := json.Marshal(m)
	return b
}

// EmitOptions says how Emit signs and spoils a delivery.
type EmitOptions struct {
	Scheme string `json:"scheme,omitempty"` // default ed25519
	// Tamper changes the body after signing.
	Tamper bool `json:"tamper,omitempty"`
	// BadEd25519 (with scheme both) sends a wrong X-GHL-Signature next to
	// a good X-WH-Signature.
	BadEd25519 bool `json:"bad_ed25519,omitempty"`
}

// Sign returns the headers HighLevel would send with body.
func (s *Server) Sign(body []byte, o EmitOptions) (http.Header, error) {
	sg, err := s.Signer()
	if err != nil {
		return nil, err
	}
	h := http.Header{"Content-Type": {"application/json"}}
	scheme := o.Scheme
	if scheme == "" {
		scheme = SchemeEd25519
	}
	if scheme == SchemeEd25519 || scheme == SchemeBoth {
		sig := sg.SignEd25519(body)
		if o.BadEd25519 {
			sig = sg.SignEd25519(append([]byte("x"), body...))
		}
		h.Set(signature.HeaderSignature, sig)
	}
	if scheme == SchemeRSA || scheme == SchemeBoth {
		sig, err := sg.SignRSA(body)
		if err != nil {
			return nil, err
		}
		h.Set(signature.HeaderLegacySignature, sig)
	}
	return h, nil
}

// Emit signs body and POSTs it to url; it returns the answer's status and body.
func (s *Server) Emit(ctx context.Context, url string, body []byte, o EmitOptions) (int, []byte, error) {
	h, err := s.Sign(body, o)
	if err != nil {
		return 0, nil, err
	}
	if o.Tamper {
		body = bytes.Replace(body, []byte(`"type"`), []byte(` "type"`), 1)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b, nil
}

// emitRequest is POST /_sandbox/webhooks: build an event, sign it, send it
// to url Copies times (more than one: replays of the same delivery).
type emitRequest struct {
	URL    string `json:"url"`
	Copies int    `json:"copies,omitempty"`
	EventSpec
	EmitOptions
}

type emitAnswer struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"`
}

func (s *Server) emitHTTP(w http.ResponseWriter, r *http.Request) {
	var req emitRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.URL == "" || req.Type == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("want {url, type, location_id, contact_id, ...}: %v", err)})
		return
	}
	body := s.EventBody(req.EventSpec)
	out := []emitAnswer{}
	for range max(req.Copies, 1) {
		st, b, err := s.Emit(r.Context(), req.URL, body, req.EmitOptions)
		a := emitAnswer{Status: st}
		if json.Valid(b) {
			a.Body = b
		}
		if err != nil {
			a.Error = err.Error()
		}
		out = append(out, a)
	}
	writeJSON(w, http.StatusOK, map[string]any{"event": json.RawMessage(body), "answers": out})
}

func (s *Server) webhookKeysHTTP(w http.ResponseWriter, _ *http.Request) {
	sg, err := s.Signer()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	ed, rs := sg.PublicKeys()
	writeJSON(w, http.StatusOK, map[string]string{"ed25519": ed, "rsa": rs})
}
