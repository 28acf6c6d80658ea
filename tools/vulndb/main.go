// Command vulndb turns the OSV files of the golang.org/x/vulndb module (which
// the Go module proxy serves) into the database layout govulncheck reads with
// -db file:///DIR, for machines that cannot reach vuln.go.dev. CI uses it:
//
//	go run ./tools/vulndb -out DIR   # then: govulncheck -db file://DIR ./...
//
// The module's OSV files carry no modification times (the official build
// takes them from git history), so every entry gets the module version's
// time; govulncheck only uses them for caching.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Version is the golang.org/x/vulndb pseudo-version read; bump it to get
// newer advisories.
const Version = "v0.0.0-20261105234957-e22db6528018"

func main() {
	out := flag.String("out", "", "directory to write the database to (required)")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "vulndb:", err)
		os.Exit(1)
	}
}

type osvEntry struct {
	ID       string `json:"id"`
	Modified string `json:"modified"`
	Affected []struct {
		Package struct {
			Name string `json:"name"`
		} `json:"package"`
		Ranges []struct {
			Events []map[string]string `json:"events"`
		} `json:"ranges"`
	} `json:"affected"`
}

type vulnRef struct {
	ID       string `json:"id"`
	Modified string `json:"modified"`
	Fixed    string `json:"fixed,omitempty"`
}

func run(out string) error {
	if out == "" {
		return errors.New("-out is required")
	}
	cmd := exec.Command("go", "mod", "download", "-json", "golang.org/x/vulndb@"+Version)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go mod download golang.org/x/vulndb@%s: %w", Version, err)
	}
	var dl struct{ Dir string }
	if err := json.Unmarshal(b, &dl); err != nil || dl.Dir == "" {
		return fmt.Errorf("go mod download: unexpected output %s", b)
	}
	// The pseudo-version's timestamp: 20261105234957.
	parts := strings.Split(Version, "-")
	ts, err := time.Parse("20060102150405", parts[len(parts)-2])
	if err != nil {
		return err
	}
	modified := ts.UTC().Format(time.RFC3339)

	files, err := filepath.Glob(filepath.Join(dl.Dir, "data", "osv", "*.json"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no OSV files under %s", dl.Dir)
	}
	if err := os.MkdirAll(filepath.Join(out, "ID"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "index"), 0o755); err != nil {
		return err
	}
	byModule := map[string][]vulnRef{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var full map[string]any
		var e osvEntry
		if err := json.Unmarshal(raw, &full); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		full["modified"] = modified
		if e.Modified == "" || strings.HasPrefix(e.Modified, "0001-") {
			e.Modified = modified
		}
		if p, ok := full["published"].(string); !ok || strings.HasPrefix(p, "0001-") {
			full["published"] = modified
		}
		enc, err := json.Marshal(full)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "ID", e.ID+".json"), enc, 0o644); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, a := range e.Affected {
			mod := a.Package.Name
			if seen[mod] {
				continue
			}
			seen[mod] = true
			fixed := ""
			for _, r := range a.Ranges {
				for _, ev := range r.Events {
					if v := ev["fixed"]; v != "" {
						fixed = v
					}
				}
			}
			byModule[mod] = append(byModule[mod], vulnRef{ID: e.ID, Modified: modified, Fixed: fixed})
		}
	}
	type module struct {
		Path  string    `json:"path"`
		Vulns []vulnRef `json:"vulns"`
	}
	var mods []module
	for p, v := range byModule {
		sort.Slice(v, func(i, j int) bool { return v[i].ID < v[j].ID })
		mods = append(mods, module{Path: p, Vulns: v})
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	if err := writeJSON(filepath.Join(out, "index", "modules.json"), mods); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(out, "index", "db.json"), map[string]string{"modified": modified}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "vulndb: %d advisories for %d modules (golang.org/x/vulndb %s) in %s\n", len(files), len(mods), Version, out)
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
