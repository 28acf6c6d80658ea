package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

const tokensUsage = `usage: enqueue tokens set --location L [--replace] < pair.json   (a location's OAuth pair, or a bare refresh token)
       enqueue tokens delete --location L                (remove a location's stored pair: the agency's or the file's token applies)
       enqueue tokens list [--json]                      (every location with a token, and which source applies)
       enqueue tokens agency set --company C --app A [--replace] < pair.json   (the agency's (Company) OAuth pair)
       enqueue tokens agency app --company C --app A     (the app id alone, keeping the stored pair)
       enqueue tokens agency locations [--json]          (where the agency's app is installed, from HighLevel)
Pairs are read from stdin, never from flags (which show in ps), and never echoed`

func (e *env) tokensCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tokens",
		Short: "OAuth pairs and the agency: load them (from stdin, never echoed), list which applies",
		Long: `Tokens for the workers, kept encrypted in Redis (GHL_TOKEN_KEY): a location's OAuth pair, or
the agency's pair from which a token is minted for every location without one of its own.
Pairs are read from stdin, never from flags (which show in ps), and never echoed.`,
		RunE: subcommandOnly(tokensUsage),
	}
	set := &cobra.Command{
		Use:     "set --location L < pair.json",
		Short:   "Load a location's OAuth pair (the token endpoint's JSON answer, or a bare refresh token)",
		Example: `  GHL_TOKEN_KEY=... enqueue tokens set --location LOC < pair.json`,
		Args:    noArgs,
	}
	location := set.Flags().String("location", "", "location (sub-account) id")
	replace := set.Flags().Bool("replace", false, "replace the pair stored for the location (workers rotate it: an old pair file is likely used up)")
	set.RunE = func(cmd *cobra.Command, _ []string) error {
		return e.setPair(cmd.Context(), *location, "", false, *replace)
	}

	del := &cobra.Command{
		Use:     "delete --location L",
		Short:   "Remove a location's stored OAuth pair (its cancels then use GHL_TOKENS_FILE or the agency's minted token)",
		Example: `  enqueue tokens delete --location LOC`,
		Args:    noArgs,
	}
	delLocation := del.Flags().String("location", "", "location (sub-account) id")
	del.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := ghl.ValidateID(*delLocation); err != nil {
			return usageError{fmt.Errorf("--location: %w", err)}
		}
		rdb, err := e.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer rdb.Close()
		ok, err := tokens.DeletePair(cmd.Context(), rdb, *delLocation)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("location %s has no stored OAuth pair: nothing removed (`enqueue tokens list` shows each location's source)", *delLocation)
		}
		fmt.Fprintf(e.stdout, "removed the stored OAuth pair of location %s; its cancels now take GHL_TOKENS_FILE or the agency's minted token "+
			"(requeue its dead letters: `enqueue dead requeue --location %s`)\n", *delLocation, *delLocation)
		return nil
	}

	list := &cobra.Command{Use: "list", Short: "Every location with a token, the source that applies, and expiry (no secrets)", Args: noArgs}
	listJSON := list.Flags().Bool("json", false, "print JSON")
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		rdb, err := e.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer rdb.Close()
		return e.tokensList(cmd.Context(), rdb, *listJSON)
	}

	agency := &cobra.Command{
		Use:   "agency",
		Short: "The agency's (Company) pair: one app installed at agency level, a token minted per location",
		RunE:  subcommandOnly(tokensUsage),
	}
	aset := &cobra.Command{
		Use:     "set --company C [--app A] < pair.json",
		Short:   "Load the agency's OAuth pair; workers then mint a token for every location without one",
		Example: `  GHL_TOKEN_KEY=... enqueue tokens agency set --company COMPANY --app APP < agency-pair.json`,
		Args:    noArgs,
	}
	company := aset.Flags().String("company", "", "the agency's company id")
	app := aset.Flags().String("app", "", "the marketplace app's id (HighLevel needs it to list installed locations; kept when omitted)")
	areplace := aset.Flags().Bool("replace", false, "replace the agency pair stored (workers rotate it: an old pair file is likely used up)")
	aset.RunE = func(cmd *cobra.Command, _ []string) error {
		return e.setPair(cmd.Context(), *company, *app, true, *areplace)
	}

	locs := &cobra.Command{
		Use:   "locations",
		Short: "Where the agency's app is installed (HighLevel's installedLocations, 100 per page)",
		Args:  noArgs,
	}
	baseURL := locs.Flags().String("base-url", cmp.Or(e.getenv("GHL_BASE_URL"), ghl.BaseURLDefault), "HighLevel API base URL (env GHL_BASE_URL)")
	locsJSON := locs.Flags().Bool("json", false, "print JSON")
	locs.RunE = func(cmd *cobra.Command, _ []string) error {
		rdb, err := e.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer rdb.Close()
		return e.agencyLocations(cmd.Context(), rdb, *baseURL, *locsJSON)
	}
	appCmd := &cobra.Command{
		Use:     "app --company C --app A",
		Short:   "Set the agency's marketplace app id, keeping its stored pair (for listing installs)",
		Example: `  enqueue tokens agency app --company COMPANY --app APP`,
		Args:    noArgs,
	}
	appCompany := appCmd.Flags().String("company", "", "the agency's company id (as set)")
	appID := appCmd.Flags().String("app", "", "the marketplace app's id")
	appCmd.RunE = func(cmd *cobra.Command, _ []string) error {
		for _, f := range []struct{ name, v string }{{"--company", *appCompany}, {"--app", *appID}} {
			if err := ghl.ValidateID(f.v); err != nil {
				return usageError{fmt.Errorf("%s: %w", f.name, err)}
			}
		}
		rdb, err := e.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer rdb.Close()
		if err := tokens.SetAgencyApp(cmd.Context(), rdb, *appCompany, *appID); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "set app %s for company %s (the stored pair is kept)\n", *appID, *appCompany)
		return nil
	}
	agency.AddCommand(aset, appCmd, locs)
	cmd.AddCommand(set, del, list, agency)
	return cmd
}

// setPair stores a location's pair, or (agency) the agency's, read from stdin.
// A pair the token endpoint says is another location's, another company's
// or of the other kind is refused: its first refresh would use up the
// other one's refresh token. A stored pair is replaced only with replace:
// workers rotate it on every refresh, so loading a pair file again puts
// back a refresh token that is likely used up.
func (e *env) setPair(ctx context.Context, subject, app string, agency, replace bool) error {
	flagName := "--location"
	if agency {
		flagName = "--company"
	}
	if err := ghl.ValidateID(subject); err != nil {
		return usageError{fmt.Errorf("%s: %w", flagName, err)}
	}
	if app != "" {
		if err := ghl.ValidateID(app); err != nil {
			return usageError{fmt.Errorf("--app: %w", err)}
		}
	}
	key, err := tokens.ParseKey(e.getenv("GHL_TOKEN_KEY"))
	if err != nil {
		return fmt.Errorf("GHL_TOKEN_KEY: %w", err)
	}
	rdb, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	in, err := readPair(e.stdin)
	if err != nil {
		return err
	}
	if err := in.belongsTo(subject, agency); err != nil {
		return usageError{err}
	}
	access, refresh, exp := in.AccessToken, in.RefreshToken, time.Duration(in.ExpiresIn*float64(time.Second))
	o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: key, Company: agency})
	if err != nil {
		return err
	}
	if !replace {
		var stored bool
		var what string
		if agency {
			// The agency's company can be set with no pair stored (it was
			// lost): then there is nothing to replace.
			ai, ok, err := tokens.LoadAgency(ctx, rdb)
			if err != nil {
				return err
			}
			if ok {
				if stored, err = o.Stored(ctx, ai.Company); err != nil {
					return err
				}
			}
			what = "an agency pair is stored already (company " + ai.Company + ")"
		} else {
			if stored, err = o.Stored(ctx, subject); err != nil {
				return err
			}
			what = "location " + subject + " has a stored pair already"
		}
		if stored {
			return usageError{fmt.Errorf("%s: workers rotate its refresh token on every refresh, so a pair loaded before is likely used up "+
				"and would break it; pass --replace to store this one (a pair the token endpoint just issued, or after reinstalling the app)", what)}
		}
	}
	e.warnOtherKey(ctx, rdb, key, subject, agency)
	if !agency {
		if err := o.Set(ctx, subject, access, refresh, exp); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "stored an encrypted token pair for location %s\n", subject)
		return nil
	}
	if err := tokens.SetAgency(ctx, o, subject, app, access, refresh, exp); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "stored the agency's encrypted token pair for company %s\n", subject)
	if app == "" {
		if ai, _, err := tokens.LoadAgency(ctx, rdb); err == nil && ai.App == "" {
			fmt.Fprintln(e.stderr, "note: without an app id, `enqueue tokens agency locations` and `enqueue sweep --all-locations` cannot list installs: set it with `enqueue tokens agency app --company "+subject+" --app A` (keeps this pair)")
		}
	}
	fmt.Fprintln(e.stderr, "workers with GHL_CLIENT_ID, GHL_CLIENT_SECRET and GHL_TOKEN_KEY now mint a token for every location without one of its own")
	return nil
}

// warnOtherKey warns when a pair already stored (another location's, or
// the agency's) does not decrypt with key: workers hold one GHL_TOKEN_KEY,
// so the pair stored now, or those, would be unreadable to them (they
// dead-letter token_key after 5 tries). A warning, not a refusal: loading
// every pair again under a new key is how the key is rotated.
func (e *env) warnOtherKey(ctx context.Context, rdb *redis.Client, key []byte, subject string, agency bool) {
	var what string
	if ai, ok, err := tokens.LoadAgency(ctx, rdb); err == nil && ok && !(agency && ai.Company == subject) {
		if o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: key, Company: true}); err == nil &&
			errors.Is(o.Opens(ctx, ai.Company), tokens.ErrWrongKey) {
			what = "the agency's pair (company " + ai.Company + ")"
		}
	}
	if what == "" {
		locs, err := tokens.Locations(ctx, rdb)
		if err != nil {
			return
		}
		o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: key})
		if err != nil {
			return
		}
		// Every pair: a rotation left half done has some of each key (the
		// first pair alone said nothing of the others).
		bad, checked, first := 0, 0, ""
		for _, loc := range slices.Sorted(maps.Keys(locs)) {
			if loc == subject && !agency {
				continue
			}
			checked++
			if errors.Is(o.Opens(ctx, loc), tokens.ErrWrongKey) {
				if bad++; first == "" {
					first = loc
				}
			}
		}
		switch {
		case bad == 1:
			what = "location " + first + "'s pair"
		case bad > 1:
			what = fmt.Sprintf("%d of the %d location pairs stored (location %s's, ...)", bad, checked, first)
		}
	}
	if what != "" {
		fmt.Fprintf(e.stderr, "warning: %s, stored before, does not decrypt with this GHL_TOKEN_KEY: workers hold one key, so they cannot read both; "+
			"use the key the stored pairs were sealed with (or load every pair again with the new one)\n", what)
	}
}

// pairIn is a token endpoint answer as loaded: the pair, and whose it is
// when the answer says (HighLevel's answers carry userType, locationId and
// companyId; a bare refresh token says nothing).
type pairIn struct {
	AccessToken  string  `json:"access_token"`
	RefreshToken string  `json:"refresh_token"`
	ExpiresIn    float64 `json:"expires_in"`
	UserType     string  `json:"userType"`
	LocationID   string  `json:"locationId"`
	CompanyID    string  `json:"companyId"`
}

// belongsTo checks what the answer says of itself against the command: a
// location's pair for that location, the agency's for that company.
func (in pairIn) belongsTo(subject string, agency bool) error {
	switch {
	case agency && strings.EqualFold(in.UserType, "Location"):
		return fmt.Errorf("stdin: this is a location's pair (location %s), not the agency's: load it with `enqueue tokens set --location %s`", in.LocationID, cmp.Or(in.LocationID, "L"))
	case agency && in.CompanyID != "" && in.CompanyID != subject:
		return fmt.Errorf("stdin: this pair is company %s's, not %s's: check --company", in.CompanyID, subject)
	case !agency && strings.EqualFold(in.UserType, "Company"):
		return fmt.Errorf("stdin: this is an agency (Company) pair: load it with `enqueue tokens agency set --company %s`", cmp.Or(in.CompanyID, "C"))
	case !agency && in.LocationID != "" && in.LocationID != subject:
		return fmt.Errorf("stdin: this pair is location %s's, not %s's: load it with --location %s (its first refresh would use up %s's refresh token)",
			in.LocationID, subject, in.LocationID, in.LocationID)
	}
	return nil
}

// readPair reads a token endpoint answer (JSON) or a bare refresh token.
func readPair(stdin io.Reader) (pairIn, error) {
	raw, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
	if err != nil {
		return pairIn{}, err
	}
	var in pairIn
	text := strings.TrimSpace(string(raw))
	if strings.HasPrefix(text, "{") {
		if err := json.Unmarshal([]byte(text), &in); err != nil {
			return pairIn{}, errors.New("stdin: not a JSON object with refresh_token (and optionally access_token, expires_in)")
		}
	} else {
		in.RefreshToken = text
	}
	switch {
	case in.RefreshToken == "":
		return pairIn{}, errors.New("stdin: no refresh token (give the token endpoint's JSON answer, or the refresh token alone)")
	case strings.HasPrefix(in.RefreshToken, `"`) || strings.HasSuffix(in.RefreshToken, `"`):
		// jq .refresh_token without -r: stored with its quotes, the token
		// is refused as invalid_grant ("reinstall the app") while the real
		// one is unspent.
		return pairIn{}, errors.New(`stdin: the refresh token is in quotes (jq without -r?): give it bare (jq -r .refresh_token), or the token endpoint's whole JSON answer`)
	}
	for _, t := range []struct{ what, tok string }{{"refresh token", in.RefreshToken}, {"access token", in.AccessToken}} {
		if t.tok == "" {
			continue
		}
		if err := ghl.CheckToken(t.tok); err != nil {
			return pairIn{}, fmt.Errorf("stdin: %s: %w (give one token, or the token endpoint's JSON answer)", t.what, err)
		}
	}
	return in, nil
}

// tokenRow is one location in `tokens list`.
type tokenRow struct {
	Location string `json:"location_id"`
	// Source is the one workers use: file (GHL_TOKENS_FILE), oauth (the
	// location's pair) or agency (minted from the agency pair).
	Source  string     `json:"source"`
	Expires *time.Time `json:"token_expires,omitempty"`
	Note    string     `json:"note,omitempty"`
}

// tokensList shows every location with a token and the source that
// applies: an explicit token (GHL_TOKENS_FILE, when set here too), then the
// location's OAuth pair, then the agency.
func (e *env) tokensList(ctx context.Context, rdb *redis.Client, asJSON bool) error {
	rows := map[string]*tokenRow{}
	add := func(loc, source, note string) *tokenRow {
		if r, ok := rows[loc]; ok {
			r.Note = strings.TrimPrefix(r.Note+"; also "+source, "; ")
			return nil
		}
		r := &tokenRow{Location: loc, Source: source, Note: note}
		rows[loc] = r
		return r
	}
	if path := e.getenv("GHL_TOKENS_FILE"); path != "" {
		f, err := tokens.NewFile(path, nil)
		if err != nil {
			return err
		}
		for _, loc := range f.Locations() {
			add(loc, "file", "")
		}
	}
	pairs, err := tokens.Locations(ctx, rdb)
	if err != nil {
		return err
	}
	pairLocs := slices.Collect(maps.Keys(pairs))
	refused, err := tokens.Refusals(ctx, rdb, pairLocs)
	if err != nil {
		return err
	}
	for loc, exp := range pairs {
		r := add(loc, "oauth", "")
		switch {
		case r == nil:
		case refused[loc] != "":
			r.Note = refused[loc]
		case exp.UnixMilli() > 0:
			r.Expires = &exp
		default:
			r.Note = "refreshed on first use"
		}
	}
	ai, hasAgency, err := tokens.LoadAgency(ctx, rdb)
	if err != nil {
		return err
	}
	reg, err := tokens.Registry(ctx, rdb)
	if err != nil {
		return err
	}
	var agencyLocs []string
	for loc, ent := range reg {
		note := "installed " + ent.At.UTC().Format(time.RFC3339)
		if !ent.Installed {
			note = "UNINSTALLED " + ent.At.UTC().Format(time.RFC3339) + ": its cancels are dead-lettered not_installed"
		} else if !hasAgency {
			note += "; no agency pair is set"
		}
		if r := add(loc, "agency", note); r != nil {
			agencyLocs = append(agencyLocs, loc)
		}
	}
	exps, err := tokens.MintedExpiry(ctx, rdb, agencyLocs)
	if err != nil {
		return err
	}
	for loc, exp := range exps {
		rows[loc].Expires = &exp
	}
	list := make([]tokenRow, 0, len(rows))
	for _, r := range rows {
		list = append(list, *r)
	}
	slices.SortFunc(list, func(a, b tokenRow) int { return strings.Compare(a.Location, b.Location) })
	if asJSON {
		out := map[string]any{"locations": list}
		if hasAgency {
			out["agency"] = ai
		}
		return json.NewEncoder(e.stdout).Encode(out)
	}
	if hasAgency {
		fmt.Fprintf(e.stderr, "agency: company %s, app %s: locations without a token of their own get one minted from it\n", ai.Company, dash(ai.App))
	}
	// The tokens file and GHL_TOKEN live in the workers' environment, not
	// in Redis: this shell sees them only if it has them too.
	switch {
	case e.getenv("GHL_TOKEN") != "":
		fmt.Fprintln(e.stderr, "note: GHL_TOKEN is set here: workers started with it use that one token for every location, whatever this list says")
	case e.getenv("GHL_TOKENS_FILE") == "":
		fmt.Fprintln(e.stderr, "note: GHL_TOKENS_FILE is not set here: locations the workers take from a tokens file (or GHL_TOKEN) are not listed, "+
			"and a location listed oauth or agency may use the file's token; set GHL_TOKENS_FILE as the workers have it to see which applies")
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tSOURCE\tTOKEN_EXPIRES\tNOTE")
	for _, r := range list {
		when := "-"
		if r.Expires != nil {
			when = r.Expires.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Location, r.Source, when, dash(r.Note))
	}
	return tw.Flush()
}

// agency builds the agency source as a worker would, to call HighLevel.
func (e *env) agency(rdb *redis.Client, baseURL string) (*tokens.Agency, error) {
	id, secret := e.getenv("GHL_CLIENT_ID"), e.getenv("GHL_CLIENT_SECRET")
	if id == "" || secret == "" {
		return nil, errors.New("set GHL_CLIENT_ID and GHL_CLIENT_SECRET (the agency's access token may need a refresh), and GHL_TOKEN_KEY")
	}
	key, err := tokens.ParseKey(e.getenv("GHL_TOKEN_KEY"))
	if err != nil {
		return nil, fmt.Errorf("GHL_TOKEN_KEY: %w", err)
	}
	pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: key, Company: true, ClientID: id, ClientSecret: secret,
		TokenURL: strings.TrimSuffix(baseURL, "/") + "/oauth/token"})
	if err != nil {
		return nil, err
	}
	return tokens.NewAgency(tokens.AgencyConfig{Redis: rdb, BaseURL: baseURL, Pairs: pairs, Key: key})
}

// installed lists the agency's installed locations, with progress on stderr.
func (e *env) installed(ctx context.Context, rdb *redis.Client, baseURL string) ([]tokens.InstalledLocation, error) {
	a, err := e.agency(rdb, baseURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := a.Close(); err != nil {
			fmt.Fprintln(e.stderr, "enqueue:", err)
		}
	}()
	return a.Installed(ctx, func(n, total int) {
		fmt.Fprintf(e.stderr, "installed locations: %d of %d listed\n", n, total)
	})
}

func (e *env) agencyLocations(ctx context.Context, rdb *redis.Client, baseURL string, asJSON bool) error {
	locs, err := e.installed(ctx, rdb, baseURL)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{"locations": locs})
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tNAME\tINSTALLED_AT")
	for _, l := range locs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.ID, dash(l.Name), dash(l.InstalledAt))
	}
	return tw.Flush()
}
