package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// helpFlag is a flag line of the --help text that fs.Usage prints for every
// flag of parseOptions' FlagSet: "  --name (env WSPUSH_NAME)".
var helpFlag = regexp.MustCompile(`(?m)^  --([a-z0-9-]+) \(env WSPUSH_[A-Z0-9_]+\)$`)

// helpFlags returns the names --help prints, in its order.
func helpFlags(t *testing.T) []string {
	t.Helper()
	var out bytes.Buffer
	if _, err := parseOptions([]string{"--help"}, func(string) string { return "" }, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	var names []string
	for _, m := range helpFlag.FindAllStringSubmatch(out.String(), -1) {
		names = append(names, m[1])
	}
	// A change of the usage format must not turn this test into one that
	// checks nothing.
	if len(names) < 40 || !slices.Contains(names, "redis-url") || !slices.Contains(names, "node-id") {
		t.Fatalf("found %d flags in --help, not the whole set (usage format changed?):\n%s", len(names), out.String())
	}
	return names
}

// readmeSection returns the lines of README.md under heading ("## Name"),
// up to the next heading of the same or a higher level outside code blocks.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	level := strings.IndexByte(heading, ' ')
	var out []string
	in, fenced := false, false
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(line, "#") {
			n := len(line) - len(strings.TrimLeft(line, "#"))
			if line == heading {
				in = true
				continue
			}
			if in && n <= level {
				break
			}
		}
		if in {
			out = append(out, line)
		}
	}
	if !in {
		t.Fatalf("README.md has no %q section", heading)
	}
	return strings.Join(out, "\n")
}

// tableFlags returns the flags named in the first column of the markdown
// table rows of text ("| `--a`, `--b` | ...").
func tableFlags(text string) map[string]bool {
	flags := make(map[string]bool)
	name := regexp.MustCompile("`--([a-z0-9-]+)`")
	for line := range strings.SplitSeq(text, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "|") || len(cells) < 3 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			flags[m[1]] = true
		}
	}
	return flags
}

// TestReadmeConfigurationTableHasEveryFlag keeps README's configuration
// table true: every flag --help lists has a row, and every row names a flag
// that exists.
func TestReadmeConfigurationTableHasEveryFlag(t *testing.T) {
	help := helpFlags(t)
	table := tableFlags(readmeSection(t, "## Configuration"))
	for _, f := range help {
		if !table[f] {
			t.Errorf("--%s is in wspush --help but not in README.md's Configuration table: add a row", f)
		}
	}
	for f := range table {
		if !slices.Contains(help, f) {
			t.Errorf("README.md's Configuration table has --%s, which wspush --help does not list", f)
		}
	}
}

func TestReadmeSectionAndTableParsing(t *testing.T) {
	got := tableFlags("| flag | default |\n|---|---|\n| `--a`, `--b-c` | 1 |\nnot a row `--d`\n| x | `--e` |\n")
	if len(got) != 2 || !got["a"] || !got["b-c"] {
		t.Errorf("tableFlags: %v", got)
	}
	if s := readmeSection(t, "## Configuration"); !strings.Contains(s, "| flag |") || strings.Contains(s, "\n## ") {
		t.Errorf("Configuration section not cut at the next section:\n%s", s)
	}
}

// TestReadmeContentsMatchesSections keeps README's Contents list true: one
// entry per "## " section, in order, each linking to its section's anchor.
func TestReadmeContentsMatchesSections(t *testing.T) {
	var sections []string
	fenced := false
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(line, "## ") && line != "## Contents" {
			sections = append(sections, strings.TrimPrefix(line, "## "))
		}
	}
	entry := regexp.MustCompile(`^- \[(.+)\]\(#([^)]+)\)$`)
	var contents []string
	for line := range strings.SplitSeq(readmeSection(t, "## Contents"), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		m := entry.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("Contents line %q is not \"- [Title](#anchor)\"", line)
			continue
		}
		if want := githubAnchor(m[1]); m[2] != want {
			t.Errorf("Contents entry %q links to #%s, want #%s", m[1], m[2], want)
		}
		contents = append(contents, m[1])
	}
	if !slices.Equal(contents, sections) {
		t.Errorf("README.md's Contents does not match its sections:\ncontents: %q\nsections: %q", contents, sections)
	}
}

// githubAnchor is the anchor GitHub gives a heading: lower case, spaces as
// hyphens, punctuation other than hyphens and underscores dropped.
func githubAnchor(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(title) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
