package producer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// MaxLineBytes bounds one input line; a longer line is reported and skipped
// without being held in memory.
const MaxLineBytes = 4096

// Line is one parsed input line: an Item, or the reason it was refused.
type Line struct {
	N    int // 1-based line number
	Item Item
	Err  error
}

// Reader streams items from plain ids (one per line) or CSV with a header
// naming message_id and optionally location_id, kind, campaign_id, send_at.
// Blank lines and lines starting with '#' are skipped. Defaults fill what a
// line does not say. It holds one line in memory at a time.
type Reader struct {
	br       *bufio.Reader
	defaults Item
	n        int
	cols     map[string]int // set once a CSV header is seen
	started  bool
}

// NewReader reads from r with defaults for kind, location, campaign and queue.
func NewReader(r io.Reader, defaults Item) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), defaults: defaults}
}

// idSpellings are other headers' names for the id column, lower case with
// no "_", "-" or spaces.
var idSpellings = map[string]bool{"id": true, "messageid": true, "emailmessageid": true, "msgid": true, "ids": true, "messageids": true}

// squash drops the separators idSpellings leaves out.
var squash = strings.NewReplacer("_", "", "-", "", " ", "")

// knownList names knownColumns in header errors.
const knownList = "known: message_id, location_id, kind, campaign_id, send_at"

var knownColumns = map[string]bool{"message_id": true, "location_id": true, "kind": true, "campaign_id": true, "send_at": true}

// Next returns the next non-blank line; ok is false at the end. A read
// error other than EOF, or a bad CSV header, ends the stream with ok false
// and a Line carrying the error.
func (r *Reader) Next() (Line, bool) {
	for {
		raw, tooLong, err := r.readLine()
		if raw == nil && !tooLong && err != nil {
			if errors.Is(err, io.EOF) {
				return Line{}, false
			}
			return Line{N: r.n + 1, Err: fmt.Errorf("read: %w", err)}, false
		}
		r.n++
		if tooLong {
			return Line{N: r.n, Err: fmt.Errorf("line is longer than %d bytes", MaxLineBytes)}, true
		}
		text := strings.TrimSpace(strings.TrimPrefix(string(raw), "\ufeff"))
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if !utf8.ValidString(text) || strings.IndexByte(text, 0) >= 0 {
			return Line{N: r.n, Err: errors.New("line is not text (binary data?)")}, true
		}
		if !r.started {
			r.started = true
			if hdr, ok, err := parseHeader(text); ok {
				if err != nil { // every row would be misread: stop here
					return Line{N: r.n, Err: err}, false
				}
				r.cols = hdr
				continue
			}
		} else if r.cols != nil && strings.Contains(strings.ToLower(text), "message_id") {
			// The header again: files joined with cat. The same columns
			// are skipped; other ones would misread every row after them.
			if hdr, ok, err := parseHeader(text); ok {
				if err == nil && maps.Equal(hdr, r.cols) {
					continue
				}
				return Line{N: r.n, Err: errors.New("a second header with other columns (files joined?): send each file on its own")}, false
			}
		}
		it, err := r.parse(text)
		return Line{N: r.n, Item: it, Err: err}, true
	}
}

// readLine reads up to '\n'. A line over MaxLineBytes is drained, not kept.
func (r *Reader) readLine() (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, err := r.br.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxLineBytes+2 { // +2 for "\r\n"
			tooLong = true
			buf = nil
		} else if !tooLong {
			buf = append(buf, chunk...)
		}
		switch {
		case err == nil:
			return bytes.TrimRight(buf, "\r\n"), tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default: // EOF or a read error: return what we have
			if len(buf) == 0 && !tooLong {
				return nil, false, err
			}
			return bytes.TrimRight(buf, "\r\n"), tooLong, nil
		}
	}
}

func parseHeader(text string) (map[string]int, bool, error) {
	fields := splitCSV(text)
	isHeader := false
	for _, f := range fields {
		if strings.EqualFold(f, "message_id") {
			isHeader = true
		}
	}
	if !isHeader && strings.Contains(strings.ToLower(text), "message_id") {
		for _, sep := range []string{";", "\t", "|"} {
			if strings.Contains(text, sep) {
				return nil, true, fmt.Errorf("header: the columns are separated by %q; ghlcancel reads comma-separated files (export as CSV)", sep)
			}
		}
	}
	if !isHeader {
		// A header in another spelling ("id", "messageId", "Message ID")
		// would be read as a message id: HighLevel called for it, counted
		// not_found, and the column named nothing.
		for _, f := range fields {
			if idSpellings[squash.Replace(strings.ToLower(f))] {
				return nil, true, fmt.Errorf("header: column %q is not one ghlcancel reads: name the id column message_id (%s)", f, knownList)
			}
		}
		// Other known columns but no message_id: a header whose id column
		// is misspelt (mesage_id). Read as data, every line was refused
		// as "one id per line" and the typo never named.
		if len(fields) > 1 && slices.ContainsFunc(fields, func(f string) bool { return knownColumns[strings.ToLower(f)] }) {
			var odd []string
			for _, f := range fields {
				if !knownColumns[strings.ToLower(f)] {
					odd = append(odd, strconv.Quote(f))
				}
			}
			unknown := ""
			if len(odd) > 0 {
				unknown = " (unknown: " + strings.Join(odd, ", ") + ")"
			}
			return nil, true, fmt.Errorf("header: no message_id column%s: name the id column message_id (%s)", unknown, knownList)
		}
		return nil, false, nil
	}
	cols := map[string]int{}
	for i, f := range fields {
		name := strings.ToLower(f)
		if !knownColumns[name] {
			if f == "" {
				return nil, true, fmt.Errorf("header: an empty column name (a trailing comma?) (%s)", knownList)
			}
			return nil, true, fmt.Errorf("header: unknown column %q (%s)", f, knownList)
		}
		if _, dup := cols[name]; dup {
			return nil, true, fmt.Errorf("header: column %q appears twice", f)
		}
		cols[name] = i
	}
	return cols, true, nil
}

// headerNames are what a one-column file's header is called, lower case
// with no "_", "-" or spaces, besides idSpellings (columnName takes both).
// Exact names only: HighLevel's ids are 20 random letters and digits, and
// about 3% have no digit, some of them holding "sms" or "msg" by chance.
var headerNames = map[string]bool{"message": true, "messages": true, "msg": true, "msgs": true, "sms": true, "smsid": true,
	"email": true, "emailid": true, "emails": true, "uuid": true, "uuids": true, "scheduledmessageid": true,
	"scheduledmessageids": true, "conversationmessageid": true, "messageuuid": true, "locationid": true, "campaignid": true}

// looksLikeHeader: a line of a one-column file that is a column name, not
// an id: one with no digit and an "_" (no HighLevel id has one), or one
// of the names above.
func looksLikeHeader(text string) bool {
	if strings.ContainsAny(text, "0123456789") {
		return false
	}
	return strings.Contains(text, "_") || columnName(text)
}

// columnName: s, in any case and with any "_", "-" or spaces, is a column
// name (idSpellings, headerNames).
func columnName(s string) bool {
	name := squash.Replace(strings.ToLower(s))
	return idSpellings[name] || headerNames[name]
}

func splitCSV(text string) []string {
	fields := strings.Split(text, ",")
	for i, f := range fields {
		fields[i] = strings.Trim(strings.TrimSpace(f), `"`)
	}
	return fields
}

// joinedWithHeader: an id with a header glued to its end, the line where
// a file with no final line break meets the next file's header (cat a b):
// message_id anywhere (no HighLevel id holds an "_"), or a column name of
// 4 letters or more after a 20-character id. Read as one id, the real
// message is never cancelled.
func joinedWithHeader(id string) bool {
	if strings.Contains(strings.ToLower(id), "message_id") {
		return true
	}
	// Names of 4 letters or more: "id" or "sms" after an id of another
	// length is too likely to be part of it.
	return len(id) > 20 && len(squash.Replace(id[20:])) >= 4 && columnName(id[20:])
}

func (r *Reader) parse(text string) (Item, error) {
	it := r.defaults
	if r.cols == nil {
		if strings.ContainsAny(text, ", \t") {
			return it, errors.New("expected one id per line (or a CSV header naming message_id)")
		}
		if looksLikeHeader(text) {
			return it, fmt.Errorf("%q looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line", text)
		}
		if joinedWithHeader(text) {
			return it, fmt.Errorf("%q is an id and a column name on one line (files joined with no final line break?): put a line break between them", text)
		}
		it.MessageID = text
		return it, validateItem(it)
	}
	fields := splitCSV(text)
	if len(fields) != len(r.cols) {
		return it, fmt.Errorf("has %d fields, the header has %d", len(fields), len(r.cols))
	}
	get := func(name string) (string, bool) {
		i, ok := r.cols[name]
		if !ok {
			return "", false
		}
		return fields[i], true
	}
	it.MessageID, _ = get("message_id")
	if joinedWithHeader(it.MessageID) {
		return it, fmt.Errorf("message_id %q is an id and a column name on one line (files joined with no final line break?): put a line break between them", it.MessageID)
	}
	if v, ok := get("location_id"); ok && v != "" {
		it.LocationID = v
	}
	if v, ok := get("campaign_id"); ok && v != "" {
		it.CampaignID = v
	}
	if v, ok := get("kind"); ok && v != "" {
		k, err := ghl.ParseKind(v)
		if err != nil {
			return it, err
		}
		it.Kind = k
	}
	if v, ok := get("send_at"); ok && v != "" {
		ts, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ts < 0 {
			return it, fmt.Errorf("send_at %q: want unix seconds", v)
		}
		if err := tasks.CheckUnixSeconds(ts); err != nil {
			return it, fmt.Errorf("send_at: %w", err)
		}
		it.SendAt = ts
	}
	return it, validateItem(it)
}

func validateItem(it Item) error {
	if err := ghl.ValidateID(it.MessageID); err != nil {
		return fmt.Errorf("message_id: %w", err)
	}
	if it.LocationID == "" {
		return errors.New("location_id: missing (give --location or a location_id column)")
	}
	if err := ghl.ValidateID(it.LocationID); err != nil {
		return fmt.Errorf("location_id: %w", err)
	}
	if it.CampaignID != "" {
		if err := tasks.ValidateCampaignID(it.CampaignID); err != nil {
			return fmt.Errorf("campaign_id: %w", err)
		}
	}
	return nil
}
