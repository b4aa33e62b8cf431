package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// svgGroup is an element with an id: its name, how many children of each
// kind it has, and the points of its polyline.
type svgGroup struct {
	name     string
	children map[string]int
	points   string
}

// parseSVG parses an SVG, failing on malformed XML, and returns its
// elements by id.
func parseSVG(t *testing.T, b []byte) map[string]*svgGroup {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	groups := map[string]*svgGroup{}
	var stack []*svgGroup
	root := false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("malformed SVG: %v\n%s", err, b)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if !root {
				if el.Name.Local != "svg" || el.Name.Space != "http://www.w3.org/2000/svg" {
					t.Fatalf("root element %v, want svg in the SVG namespace", el.Name)
				}
				root = true
			}
			var g *svgGroup
			for _, a := range el.Attr {
				if a.Name.Local == "id" {
					g = &svgGroup{name: el.Name.Local, children: map[string]int{}}
					groups[a.Value] = g
				}
			}
			if len(stack) > 0 && stack[len(stack)-1] != nil {
				parent := stack[len(stack)-1]
				parent.children[el.Name.Local]++
				if el.Name.Local == "polyline" {
					for _, a := range el.Attr {
						if a.Name.Local == "points" {
							parent.points = a.Value
						}
					}
				}
			}
			stack = append(stack, g)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
	if !root {
		t.Fatal("no svg element")
	}
	return groups
}

func TestTableSVG(t *testing.T) {
	r := sampleTable()
	path := filepath.Join(t.TempDir(), "t.svg")
	if err := WriteSVG(path, r); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := RenderSVG(&b, r); err != nil {
		t.Fatal(err)
	}
	g := parseSVG(t, b.Bytes())
	for _, id := range []string{"avg-latency", "p99-latency", "error-rate"} {
		s := g[id]
		if s == nil {
			t.Fatalf("no series %q", id)
		}
		if s.children["circle"] != 3 || len(strings.Fields(s.points)) != 3 {
			t.Errorf("series %s: %d points, polyline %q; want the 3 measured steps", id, s.children["circle"], s.points)
		}
	}
	if g["paper-avg"] == nil || g["paper-avg"].children["rect"] != 2 {
		t.Errorf("paper reference: %+v", g["paper-avg"])
	}
	if g["skipped"] == nil || g["skipped"].children["text"] != 2 {
		t.Errorf("skipped and failed steps should be marked: %+v", g["skipped"])
	}
	// Log scale: 500 → 1500 is as wide as 5000 → 15000; x grows with
	// connections.
	var x []float64
	for _, p := range strings.Fields(g["avg-latency"].points) {
		xs, _, _ := strings.Cut(p, ",")
		v, err := strconv.ParseFloat(xs, 64)
		if err != nil {
			t.Fatalf("point %q: %v", p, err)
		}
		x = append(x, v)
	}
	if len(x) != 3 || math.Abs((x[1]-x[0])-(x[2]-x[1])*math.Log10(3)/math.Log10(5000.0/1500)) > 0.5 {
		t.Errorf("x positions %v are not on a log scale of 500, 1500, 5000", x)
	}
}

func TestTableSVGWithNothingMeasured(t *testing.T) {
	r := &Report{Scenario: "table", Table: &TableConfig{Source: SourcePoller}, Steps: []StepReport{{Connections: 100, Skipped: "x & <y>"}}}
	var b bytes.Buffer
	if err := RenderSVG(&b, r); err != nil {
		t.Fatal(err)
	}
	g := parseSVG(t, b.Bytes())
	if g["avg-latency"] == nil || g["avg-latency"].children["circle"] != 0 {
		t.Fatalf("empty series expected: %+v", g["avg-latency"])
	}
}

func TestHistogramSVG(t *testing.T) {
	for _, scenario := range []string{"fanout", "capacity"} {
		r := sampleTable()
		r.Scenario, r.Table, r.Steps = scenario, nil, r.Steps[:1]
		var b bytes.Buffer
		if err := RenderSVG(&b, r); err != nil {
			t.Fatal(err)
		}
		g := parseSVG(t, b.Bytes())
		if g["histogram"] == nil || g["histogram"].children["rect"] == 0 {
			t.Fatalf("%s: no histogram bars", scenario)
		}
		for _, id := range []string{"p50", "p99", "p999"} {
			if g[id] == nil || g[id].children["line"] != 1 {
				t.Errorf("%s: no %s marker", scenario, id)
			}
		}
	}
	r := &Report{Scenario: "fanout", Steps: []StepReport{{Connections: 1}}}
	var b bytes.Buffer
	if err := RenderSVG(&b, r); err != nil {
		t.Fatal(err)
	}
	parseSVG(t, b.Bytes())
}
