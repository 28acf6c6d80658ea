package console

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// Limits of what one page shows.
const (
	campaignsShown = 50
	deadShown      = 200
	// deadCounted bounds the records the dead-letter page counts (its
	// reason summary); the CLI's `dead export` reads every one.
	deadCounted = 20_000
	// selectionMax bounds a requeue selection.
	selectionMax = 1000
)

// page is what every template gets.
type page struct {
	Title   string
	Nav     string
	Session *session
	Data    any
	Flash   string
	Error   string
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	if p.Session == nil {
		p.Session = sessionOf(r)
	}
	var b bytes.Buffer
	if err := c.tmpl.ExecuteTemplate(&b, name, p); err != nil {
		c.log.Error("console: rendering failed", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// fail shows an error page (or a plain text line to the live fragment's fetch).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	if r.Header.Get("X-Console-Fetch") != "" {
		http.Error(w, msg, status)
		return
	}
	c.render(w, r, status, "error", page{Title: http.StatusText(status), Session: s, Error: msg})
}

func (c *Console) redisDown(w http.ResponseWriter, r *http.Request, what string, err error) {
	c.redisDownKeeping(w, r, what, err, "")
}

// redisFull is what to tell the operator when Redis refused a write for
// want of memory ("" otherwise): trying again changes nothing.
func redisFull(err error, cmds ...redis.Cmder) string {
	if e := cmdErr(cmds); e != nil {
		err = e // EXECABORT hides the command's own error
	}
	if err == nil || !strings.Contains(err.Error(), "OOM command not allowed") {
		return ""
	}
	return "Redis is full: it reached its maxmemory and refuses writes. Free memory (purge dead letters: enqueue dead purge, or Purge on the dead-letter page from a signed-in session) or raise maxmemory, then try again."
}

// cmdErr is the first error of cmds (a transaction's EXECABORT says only
// that one of them failed).
func cmdErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
			return e
		}
	}
	return nil
}

// redisDownKeeping is redisDown on a page that has already read its
// result line (read once): the error page shows it.
func (c *Console) redisDownKeeping(w http.ResponseWriter, r *http.Request, what string, err error, flash string) {
	c.log.Error("console: "+what+" failed", "err", err)
	msg := "Redis is unavailable (" + what + "); try again in a moment."
	if full := redisFull(err); full != "" {
		msg = full
	}
	if flash == "" {
		c.fail(w, r, sessionOf(r), http.StatusServiceUnavailable, msg)
		return
	}
	c.render(w, r, http.StatusServiceUnavailable, "error", page{Title: http.StatusText(http.StatusServiceUnavailable),
		Session: sessionOf(r), Flash: flash, Error: msg})
}

type campaignRow struct {
	campaign.Status
	progress
}

func (c *Console) getCampaigns(w http.ResponseWriter, r *http.Request) {
	list, err := c.campaigns.List(r.Context(), campaignsShown)
	if err != nil {
		c.redisDown(w, r, "campaigns", err)
		return
	}
	now := c.now()
	rows := make([]campaignRow, len(list))
	for i, s := range list {
		rows[i] = campaignRow{Status: s, progress: progressOf(s, now, 0, time.Time{})}
	}
	c.render(w, r, http.StatusOK, "campaigns", page{Title: "Campaigns", Nav: "campaigns", Data: rows})
}

// campaignView is the campaign page and its live fragment.
type campaignView struct {
	campaign.Status
	progress
	Outcomes []outcomeRow
	Reasons  []reasonRow
	Parked   []locRow
	Cooling  []locRow
	// SampleDone/SampleAt: this sample, sent back by the page with the
	// next poll so the rate is taken between two polls.
	SampleDone int64
	SampleAt   int64
	// LiveURL is the live part's address, escaped here: html/template does
	// not treat a data- attribute as a URL.
	LiveURL string
	// NoWorker: the campaign is running and no worker serves this Redis
	// database: nothing moves until one starts.
	NoWorker bool
}

// campaignView reads a campaign: a fixed number of Redis commands whatever
// its size (the counters hash, the retrying set's size, membership checks
// for the parked and cooling locations, the 20 newest sweeps).
func (c *Console) campaignView(r *http.Request, id string) (*campaignView, bool, error) {
	ctx := r.Context()
	s, ok, err := c.campaigns.Get(ctx, id)
	if err != nil || !ok {
		return nil, ok, err
	}
	if s.Parked, err = c.campaigns.Parked(ctx, id); err != nil {
		return nil, true, err
	}
	cooling, err := c.campaigns.Cooling(ctx, id)
	if err != nil {
		return nil, true, err
	}
	if err := c.campaigns.WithSweeps(ctx, &s); err != nil {
		return nil, true, err
	}
	now := c.now()
	q := r.URL.Query()
	var prevAt time.Time
	prevDone, _ := strconv.ParseInt(q.Get("prev_done"), 10, 64)
	if ms, err := strconv.ParseInt(q.Get("prev_at"), 10, 64); err == nil && ms > 0 {
		prevAt = time.UnixMilli(ms)
	}
	v := &campaignView{Status: s, progress: progressOf(s, now, prevDone, prevAt), Outcomes: outcomes(s),
		Reasons: reasonRows(s.DeadByReason, tasks.DeadLetterHint), SampleDone: s.Done, SampleAt: now.UnixMilli(),
		LiveURL: c.cfg.Prefix + "/campaign/live?id=" + url.QueryEscape(id)}
	for l, why := range s.Parked {
		v.Parked = append(v.Parked, locRow{Location: l, Why: why})
	}
	for l, until := range cooling {
		if _, parked := s.Parked[l]; !parked {
			v.Cooling = append(v.Cooling, locRow{Location: l, Until: until})
		}
	}
	v.Parked, v.Cooling = sortedLocs(v.Parked), sortedLocs(v.Cooling)
	if !s.Complete {
		n, err := c.campaigns.Workers(ctx)
		if err != nil {
			return nil, true, err
		}
		v.NoWorker = n == 0
	}
	return v, true, nil
}

func validID(id string) bool { return id != "" && len(id) <= 128 }

func (c *Console) getCampaign(w http.ResponseWriter, r *http.Request) {
	c.campaignPage(w, r, "campaign")
}

// getCampaignLive is the campaign page's live part, fetched every 2 s.
func (c *Console) getCampaignLive(w http.ResponseWriter, r *http.Request) {
	c.campaignPage(w, r, "live")
}

func (c *Console) campaignPage(w http.ResponseWriter, r *http.Request, tmpl string) {
	id := r.URL.Query().Get("id")
	if !validID(id) {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, "A campaign id is 1 to 128 bytes.")
		return
	}
	v, ok, err := c.campaignView(r, id)
	if err != nil {
		c.redisDown(w, r, "campaign", err)
		return
	}
	if !ok {
		msg := c.campaigns.ExpiredNotFound(r.Context(), id, "unknown, or finished longer ago than its retention (CAMPAIGN_RETENTION)",
			"see Dead letters, filtered by this campaign").Error()
		c.fail(w, r, sessionOf(r), http.StatusNotFound, strings.ToUpper(msg[:1])+msg[1:]+".")
		return
	}
	c.render(w, r, http.StatusOK, tmpl, page{Title: "Campaign " + id, Nav: "campaigns", Data: v})
}

func (c *Console) getReport(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if !validID(id) {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, "A campaign id is 1 to 128 bytes.")
		return
	}
	if _, ok, err := c.campaigns.Get(r.Context(), id); err != nil || !ok {
		if err != nil {
			c.redisDown(w, r, "report", err)
		} else {
			c.fail(w, r, sessionOf(r), http.StatusNotFound, fmt.Sprintf("No campaign %q.", id))
		}
		return
	}
	// The headers go out with the first bytes: a Redis failure before any
	// row is an error page, not an empty download; one after the first
	// rows aborts the connection, so the browser marks the download failed
	// instead of keeping a silently cut file.
	lw := &lazyWriter{w: w, start: func() {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="`+safeFilename(id)+`.csv"`)
	}}
	if _, err := c.campaigns.WriteReport(r.Context(), id, lw); err != nil {
		if r.Context().Err() != nil {
			c.log.Info("console: report download abandoned by the browser", "campaign", id)
			return
		}
		if !lw.started {
			c.redisDown(w, r, "report", err)
			return
		}
		c.log.Error("console: report download cut short; aborting it", "campaign", id, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// lazyWriter calls start before its first write.
type lazyWriter struct {
	w       io.Writer
	start   func()
	started bool
}

func (l *lazyWriter) Write(b []byte) (int, error) {
	if !l.started {
		l.started = true
		l.start()
	}
	return l.w.Write(b)
}

func safeFilename(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

// ages are the dead-letter page's age filter choices.
var ages = []struct {
	Key, Label string
	newer      time.Duration
	older      time.Duration
}{
	{"", "any age", 0, 0},
	{"1h", "last hour", time.Hour, 0},
	{"24h", "last 24 hours", 24 * time.Hour, 0},
	{"7d", "last 7 days", 7 * 24 * time.Hour, 0},
	{"gt1d", "older than a day", 0, 24 * time.Hour},
	{"gt7d", "older than 7 days", 0, 7 * 24 * time.Hour},
}

// deadFilter is the dead-letter page's filter, from a query or a form.
type deadFilter struct {
	Reason, Campaign, Location, Kind, Age string
}

func filterFrom(v url.Values) (deadFilter, deadletter.Filter, error) {
	// Ids are taken as they are: a campaign id is any bytes, spaces
	// included, and trimming "ws " would match campaign "ws".
	df := deadFilter{Reason: strings.TrimSpace(v.Get("reason")), Campaign: v.Get("campaign"),
		Location: v.Get("location"), Kind: v.Get("kind"), Age: v.Get("age")}
	f := deadletter.Filter{Reason: df.Reason, CampaignID: df.Campaign, LocationID: df.Location, Kind: df.Kind}
	if f.Validate() != nil { // the kind: ages come from the list below
		return df, f, errors.New("kind: message, email or sweep")
	}
	found := false
	for _, a := range ages {
		if a.Key == df.Age {
			f.NewerThan, f.OlderThan, found = a.newer, a.older, true
		}
	}
	if !found {
		return df, f, errors.New("age: choose one of the listed ages")
	}
	return df, f, nil
}

// Link is the filter as a query string for the pages' links (already
// escaped: html/template must not escape it again).
func (d deadFilter) Link() template.URL { return template.URL(d.Query()) } //nolint:gosec // built by url.Values.Encode

// Query is the filter as a query string (links, redirects).
func (d deadFilter) Query() string {
	v := url.Values{}
	for k, s := range map[string]string{"reason": d.Reason, "campaign": d.Campaign, "location": d.Location, "kind": d.Kind, "age": d.Age} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

func (d deadFilter) Empty() bool { return d == deadFilter{} }

type deadView struct {
	Filter    deadFilter
	Ages      any
	Records   []deadletter.Record
	Matched   int
	MoreThan  bool // more than deadCounted dead letters: Matched counts among the newest deadCounted
	Counted   int
	Reasons   []reasonRow
	Total     int64
	ShowLimit int
}

var errEnough = errors.New("enough")

func (c *Console) getDead(w http.ResponseWriter, r *http.Request) {
	df, f, err := filterFrom(r.URL.Query())
	p := page{Title: "Dead letters", Nav: "dead", Flash: c.takeFlash(r, r.URL.Query().Get("flash"))}
	if err != nil {
		p.Error = err.Error()
		p.Data = deadView{Filter: deadFilter{}, Ages: ages, ShowLimit: deadShown}
		c.render(w, r, http.StatusBadRequest, "dead", p)
		return
	}
	v := deadView{Filter: df, Ages: ages, ShowLimit: deadShown, Counted: deadCounted}
	byReason := map[string]int64{}
	// The newest deadCounted records are read whatever the filter, so the
	// page costs at most that many however many dead letters are kept.
	scanned, now := 0, c.now()
	err = c.dead.ScanNewest(r.Context(), deadletter.Filter{}, func(rec deadletter.Record) error {
		if scanned >= deadCounted {
			v.MoreThan = true
			return errEnough
		}
		scanned++
		if !f.Match(rec, now) {
			return nil
		}
		v.Matched++
		byReason[rec.Reason]++
		if len(v.Records) < deadShown {
			v.Records = append(v.Records, rec)
		}
		return nil
	})
	if err == nil || errors.Is(err, errEnough) {
		v.Total, err = c.dead.Count(r.Context())
	}
	if err != nil && !errors.Is(err, errEnough) {
		c.redisDownKeeping(w, r, "dead letters", err, p.Flash)
		return
	}
	v.Reasons = reasonRows(byReason, tasks.DeadLetterHint)
	p.Data = v
	c.render(w, r, http.StatusOK, "dead", p)
}

// flashKey holds the result line of a requeue or purge for the page the
// redirect leads to, under the session that did it: the redirect carries
// only a random name, so a crafted link cannot put numbers on an
// operator's screen, and a reload does not show them twice.
const (
	flashKey = "ghlcancel:console:flash:"
	flashTTL = 5 * time.Minute
)

// redirectWithFlash stores msg for the session and redirects to path (a
// query may follow) with its name. If Redis will not take it, the action
// is already done: its result is shown here instead.
func (c *Console) redirectWithFlash(w http.ResponseWriter, r *http.Request, path, query, msg string) {
	s := sessionOf(r)
	name := randomToken()[:16]
	if err := c.cfg.Redis.Set(r.Context(), flashKey+s.id+":"+name, msg, flashTTL).Err(); err != nil {
		c.log.Warn("console: result line not stored for the next page; shown in place", "err", err)
		c.render(w, r, http.StatusOK, "error", page{Title: "Done", Session: s, Flash: msg})
		return
	}
	if query != "" {
		query += "&"
	}
	http.Redirect(w, r, c.cfg.Prefix+path+"?"+query+"flash="+name, http.StatusSeeOther)
}

// takeFlash returns, once, the result line stored under name for this
// session ("" when there is none, it was shown already, or it is another
// session's).
func (c *Console) takeFlash(r *http.Request, name string) string {
	if name == "" || len(name) > 64 || r.Method != http.MethodGet { // a HEAD does not use it up
		return ""
	}
	msg, err := c.cfg.Redis.GetDel(r.Context(), flashKey+sessionOf(r).id+":"+name).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		c.log.Warn("console: result line could not be read", "err", err)
	}
	return msg
}

func requeueFlash(st producer.RequeueStats) string {
	msg := fmt.Sprintf("Requeued %s. Already queued %s, already done %s, skipped %s (not rebuildable, left in place).",
		Num(int64(st.Requeued)), Num(int64(st.AlreadyQueued)), Num(int64(st.AlreadyDone)), Num(int64(st.Skipped)))
	if st.Gone > 0 {
		msg += fmt.Sprintf(" %s of the selected were no longer dead letters (requeued or purged meanwhile).", Num(int64(st.Gone)))
	}
	return msg
}

func purgeFlash(purged, kept int) string {
	msg := fmt.Sprintf("Purged %s dead letters.", Num(int64(purged)))
	if kept != 0 {
		msg += fmt.Sprintf(" %s were no longer as counted (requeued, dead-lettered again or removed meanwhile) and were not deleted.", Num(int64(kept)))
	}
	return msg
}

func (c *Console) postRequeue(w http.ResponseWriter, r *http.Request) {
	df, f, err := filterFrom(r.PostForm)
	if err != nil {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, err.Error())
		return
	}
	var st producer.RequeueStats
	switch r.PostForm.Get("scope") {
	case "selected":
		ids := slices.Compact(slices.Sorted(slices.Values(r.PostForm["id"])))
		if len(ids) == 0 {
			c.fail(w, r, sessionOf(r), http.StatusBadRequest, "Select at least one dead letter to requeue (tick its box).")
			return
		}
		if len(ids) > selectionMax {
			c.fail(w, r, sessionOf(r), http.StatusBadRequest, fmt.Sprintf("At most %s dead letters per selection; requeue by filter instead.", Num(selectionMax)))
			return
		}
		st, err = c.prod.RequeueIDs(r.Context(), c.dead, ids, nil)
	case "filter":
		if df.Empty() {
			c.fail(w, r, sessionOf(r), http.StatusBadRequest, "Choose a filter first (reason, campaign, location, kind or age): requeueing every dead letter at once is for the CLI (enqueue dead requeue --all).")
			return
		}
		st, err = c.prod.Requeue(r.Context(), c.dead, f, nil)
	default:
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, "Requeue what? Use one of the page's buttons.")
		return
	}
	if err != nil {
		c.redisDown(w, r, "requeue", err)
		return
	}
	c.log.Info("console: requeued dead letters", "scope", r.PostForm.Get("scope"), "filter", df.Query(), "selected", len(r.PostForm["id"]),
		"requeued", st.Requeued, "already_queued", st.AlreadyQueued, "already_done", st.AlreadyDone, "skipped", st.Skipped, "key", sessionOf(r).key)
	c.redirectWithFlash(w, r, "/dead", df.Query(), requeueFlash(st))
}

type purgeView struct {
	Filter  deadFilter
	Ages    any
	Matched int
	// AsOf is the newest index score among the matched records when the
	// form was shown: the purge leaves out records dead-lettered after it
	// (a new failure, or an old one failing again), which nobody counted.
	AsOf int64
}

// getPurge asks for the typed confirmation: the number of dead letters
// that will be deleted.
func (c *Console) getPurge(w http.ResponseWriter, r *http.Request) {
	c.purgeForm(w, r, r.URL.Query(), http.StatusOK, "")
}

func (c *Console) purgeForm(w http.ResponseWriter, r *http.Request, v url.Values, status int, msg string) {
	df, f, err := filterFrom(v)
	if err != nil {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, err.Error())
		return
	}
	if df.Empty() {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, "Choose a filter first: purging every dead letter at once is for the CLI (enqueue dead purge --all).")
		return
	}
	refs, err := c.dead.Matching(r.Context(), f)
	if err != nil {
		c.redisDown(w, r, "purge", err)
		return
	}
	pv := purgeView{Filter: df, Ages: ages, Matched: len(refs)}
	for _, ref := range refs {
		pv.AsOf = max(pv.AsOf, ref.Score)
	}
	c.render(w, r, status, "purge", page{Title: "Purge dead letters", Nav: "dead", Error: msg, Data: pv})
}

func (c *Console) postPurge(w http.ResponseWriter, r *http.Request) {
	df, f, err := filterFrom(r.PostForm)
	if err != nil || df.Empty() {
		c.purgeForm(w, r, r.PostForm, http.StatusBadRequest, "")
		return
	}
	asOf, err := strconv.ParseInt(r.PostForm.Get("as_of"), 10, 64)
	if err != nil {
		c.purgeForm(w, r, r.PostForm, http.StatusBadRequest, "The form is incomplete; nothing was deleted. Confirm again.")
		return
	}
	// Exactly the records the operator counted are purged: those matching
	// now that were dead-lettered no later than the newest one shown. One
	// dead-lettered again since the form was shown is not among them.
	all, err := c.dead.Matching(r.Context(), f)
	if err != nil {
		c.redisDown(w, r, "purge", err)
		return
	}
	refs := all[:0]
	for _, ref := range all {
		if ref.Score <= asOf {
			refs = append(refs, ref)
		}
	}
	n := len(refs)
	if len(all) == 0 {
		// The same purge confirmed in two tabs, or a requeue meanwhile:
		// not a change to count again.
		c.purgeForm(w, r, r.PostForm, http.StatusConflict, "Nothing was deleted: none of these dead letters is left (purged or requeued meanwhile, perhaps from another tab).")
		return
	}
	typed := strings.ReplaceAll(strings.TrimSpace(r.PostForm.Get("confirm")), ",", "")
	if typed != strconv.Itoa(n) || r.PostForm.Get("expected") != strconv.Itoa(n) {
		msg := fmt.Sprintf("Nothing was deleted: type %d to confirm.", n)
		if r.PostForm.Get("expected") != strconv.Itoa(n) {
			msg = fmt.Sprintf("Nothing was deleted: the matching dead letters changed since this page was shown (requeued, failed again, or new). %d match now; type that number to delete them.", len(all))
		}
		c.purgeForm(w, r, r.PostForm, http.StatusUnprocessableEntity, msg)
		return
	}
	deleted, err := c.dead.PurgeRefs(r.Context(), refs, nil)
	if err != nil {
		c.redisDown(w, r, fmt.Sprintf("purge, after deleting %d", deleted), err)
		return
	}
	c.log.Info("console: purged dead letters", "purged", deleted, "not_as_counted", n-deleted, "filter", df.Query(), "key", sessionOf(r).key)
	c.redirectWithFlash(w, r, "/dead", df.Query(), purgeFlash(deleted, n-deleted))
}

type locationsView struct {
	Parked, Cooling []locRow
}

func (c *Console) getLocations(w http.ResponseWriter, r *http.Request) {
	parked, err := ratelimit.Parked(r.Context(), c.cfg.Redis)
	if err != nil {
		c.redisDown(w, r, "locations", err)
		return
	}
	cooling, err := ratelimit.Cooling(r.Context(), c.cfg.Redis)
	if err != nil {
		c.redisDown(w, r, "locations", err)
		return
	}
	var v locationsView
	for l, why := range parked {
		v.Parked = append(v.Parked, locRow{Location: l, Why: why})
	}
	for l, until := range cooling {
		if _, p := parked[l]; !p {
			v.Cooling = append(v.Cooling, locRow{Location: l, Until: until})
		}
	}
	v.Parked, v.Cooling = sortedLocs(v.Parked), sortedLocs(v.Cooling)
	c.render(w, r, http.StatusOK, "locations", page{Title: "Locations", Nav: "locations", Data: v,
		Flash: c.takeFlash(r, r.URL.Query().Get("flash"))})
}

// postRelease lifts a location's parking and wakes its waiting cancels
// (enqueue parked --release): for an operator who knows its daily budget
// is back before the hourly re-probe.
func (c *Console) postRelease(w http.ResponseWriter, r *http.Request) {
	loc := r.PostForm.Get("location")
	if loc == "" {
		c.fail(w, r, sessionOf(r), http.StatusBadRequest, "Release which location? Use a location's Release button.")
		return
	}
	rel, err := ratelimit.Release(r.Context(), c.cfg.Redis, loc, tasks.Queues, nil)
	var msg string
	switch {
	case errors.Is(err, ratelimit.ErrNotParked):
		msg = fmt.Sprintf("%s is not parked (its parking ended, or it was released meanwhile): nothing to release.", loc)
	case err != nil:
		c.redisDown(w, r, "release", err)
		return
	default:
		c.log.Info("console: released a parked location", "location", loc, "was", rel.Why, "woken", rel.Woken, "key", sessionOf(r).key)
		msg = fmt.Sprintf("Released %s: woke %s waiting cancels. If its daily budget is still spent, its next answer parks it again.", loc, Num(int64(rel.Woken)))
	}
	c.redirectWithFlash(w, r, "/locations", "", msg)
}
