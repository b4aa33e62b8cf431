package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// The charts are hand-written SVG: one file a browser opens, no scripts,
// no dependency. Every series is an element with an id (avg-latency,
// p99-latency, error-rate, paper-avg, histogram, p50, p99, p999) so that
// tests and tools can find it.

const (
	svgW, svgH                         = 880, 520
	padL, padR, padT, padB             = 80, 80, 70, 70
	plotW, plotH                       = svgW - padL - padR, svgH - padT - padB
	colorAvg, colorP99, colorErr, grey = "#1f77b4", "#ff7f0e", "#d62728", "#888"
)

// WriteSVG writes r's chart to path: latency and error rate against
// connections for a table, the latency (fanout) or handshake (capacity)
// histogram otherwise.
func WriteSVG(path string, r *Report) error {
	var b bytes.Buffer
	if err := RenderSVG(&b, r); err != nil {
		return err
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// RenderSVG writes r's chart (see WriteSVG) to w.
func RenderSVG(w io.Writer, r *Report) error {
	var b bytes.Buffer
	if r.Scenario == "table" {
		tableSVG(&b, r)
	} else {
		histogramSVG(&b, r)
	}
	_, err := w.Write(b.Bytes())
	return err
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func svgOpen(b *bytes.Buffer, title string) {
	fmt.Fprintf(b, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">
<title>%s</title>
<rect width="100%%" height="100%%" fill="white"/>
<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>
`, svgW, svgH, svgW, svgH, esc(title), padL, esc(title))
}

// logScale maps [lo, hi] (lo > 0) onto [0, length].
type logScale struct{ lo, hi, length float64 }

func (s logScale) at(v float64) float64 {
	return (math.Log10(v) - math.Log10(s.lo)) / (math.Log10(s.hi) - math.Log10(s.lo)) * s.length
}

// decades returns the powers of ten and their 2× and 5× within [lo, hi].
func (s logScale) ticks() []float64 {
	var out []float64
	for e := math.Floor(math.Log10(s.lo)); e <= math.Ceil(math.Log10(s.hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= s.lo*0.999 && v <= s.hi*1.001 {
				out = append(out, v)
			}
		}
	}
	return out
}

func decadeBounds(lo, hi float64) (float64, float64) {
	return math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
}

// niceCeil is the smallest 1, 2 or 5 × 10^n at or above v.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// msLabel is a tick label of milliseconds: 0.5, 20, 500, 1 s, 10 s.
func msLabel(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'g', 4, 64) + " s"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// countLabel is a tick label: 0.5, 20, 5k, 2M.
func countLabel(v float64) string {
	switch {
	case v >= 1e6 && math.Mod(v, 1e6) == 0:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3 && math.Mod(v, 1e3) == 0:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func tableSVG(b *bytes.Buffer, r *Report) {
	source := ""
	if r.Table != nil {
		source = string(r.Table.Source)
	}
	svgOpen(b, fmt.Sprintf("wspush: response time and error rate vs. connections (source %s)", source))
	var ok []StepReport
	minX, maxX := math.Inf(1), math.Inf(-1)
	minY, maxY, maxErr := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range r.Steps {
		c := float64(s.Connections)
		minX, maxX = math.Min(minX, c), math.Max(maxX, c)
		if s.Skipped != "" || s.Error != "" || s.Latency.Count == 0 {
			continue
		}
		ok = append(ok, s)
		minY = math.Min(minY, math.Max(s.Latency.Avg, 1e-3))
		maxY = math.Max(maxY, s.Latency.P99)
		maxErr = math.Max(maxErr, s.ErrorRate*100)
	}
	for _, p := range r.Reference {
		minX, maxX = math.Min(minX, float64(p.Connections)), math.Max(maxX, float64(p.Connections))
		minY, maxY = math.Min(minY, p.AvgMs), math.Max(maxY, p.AvgMs)
		maxErr = math.Max(maxErr, p.ErrorPct)
	}
	if math.IsInf(minX, 1) {
		minX, maxX = 100, 1000
	}
	if math.IsInf(minY, 1) {
		minY, maxY = 1, 10
	}
	xlo, xhi := decadeBounds(minX, maxX)
	if xlo == xhi {
		xhi *= 10
	}
	ylo, yhi := decadeBounds(minY, maxY)
	if ylo == yhi {
		yhi *= 10
	}
	xs := logScale{xlo, xhi, plotW}
	ys := logScale{ylo, yhi, plotH}
	errMax := niceCeil(math.Max(maxErr, 1))
	px := func(v float64) float64 { return padL + xs.at(v) }
	py := func(v float64) float64 { return padT + plotH - ys.at(math.Max(v, ylo)) }
	pe := func(pct float64) float64 { return padT + plotH - pct/errMax*plotH }

	// Grid and axes.
	fmt.Fprintf(b, `<g id="axes" stroke="#ddd">`+"\n")
	for _, t := range xs.ticks() {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`+"\n", px(t), padT, px(t), padT+plotH)
	}
	for _, t := range ys.ticks() {
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`+"\n", padL, py(t), padL+plotW, py(t))
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", padL, padT, plotW, plotH)
	fmt.Fprintf(b, "</g>\n")
	for _, t := range xs.ticks() {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(t), padT+plotH+18, countLabel(t))
	}
	for _, t := range ys.ticks() {
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padL-6, py(t), msLabel(t))
	}
	for i := 0; i <= 5; i++ {
		v := errMax * float64(i) / 5
		fmt.Fprintf(b, `<text x="%d" y="%.1f" dominant-baseline="middle" fill="%s">%g%%</text>`+"\n", padL+plotW+6, pe(v), colorErr, v)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">connections (log scale)</text>`+"\n", padL+plotW/2, svgH-20)
	fmt.Fprintf(b, `<text transform="translate(22 %d) rotate(-90)" text-anchor="middle">response time, ms (log scale)</text>`+"\n", padT+plotH/2)
	fmt.Fprintf(b, `<text transform="translate(%d %d) rotate(90)" text-anchor="middle" fill="%s">error rate</text>`+"\n", svgW-18, padT+plotH/2, colorErr)

	series := func(id, color, dash string, xs, ys []float64) {
		fmt.Fprintf(b, `<g id="%s" fill="%s" stroke="%s">`+"\n", id, color, color)
		if len(xs) > 1 {
			var pts []string
			for i := range xs {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xs[i], ys[i]))
			}
			fmt.Fprintf(b, `<polyline fill="none" stroke-width="2"%s points="%s"/>`+"\n", dash, strings.Join(pts, " "))
		}
		for i := range xs {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5"/>`+"\n", xs[i], ys[i])
		}
		fmt.Fprintf(b, "</g>\n")
	}
	var x, avg, p99, er []float64
	for _, s := range ok {
		x = append(x, px(float64(s.Connections)))
		avg = append(avg, py(s.Latency.Avg))
		p99 = append(p99, py(s.Latency.P99))
		er = append(er, pe(s.ErrorRate*100))
	}
	series("avg-latency", colorAvg, "", x, avg)
	series("p99-latency", colorP99, "", x, p99)
	series("error-rate", colorErr, ` stroke-dasharray="6 4"`, x, er)

	fmt.Fprintf(b, `<g id="paper-avg" fill="none" stroke="%s">`+"\n", grey)
	for _, p := range r.Reference {
		cx, cy := px(float64(p.Connections)), py(p.AvgMs)
		fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="8" height="8" stroke-width="2"/>`+"\n", cx-4, cy-4)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="%s" stroke="none">%s</text>`+"\n", cx+8, cy-6, grey, esc(p.String()))
	}
	fmt.Fprintf(b, "</g>\n")

	fmt.Fprintf(b, `<g id="skipped" fill="%s">`+"\n", grey)
	for _, s := range r.Steps {
		if s.Skipped == "" && s.Error == "" {
			continue
		}
		why := s.Skipped
		if why == "" {
			why = "failed: " + s.Error
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="16"><title>%d connections: %s</title>×</text>`+"\n",
			px(float64(s.Connections)), padT+plotH-4, s.Connections, esc(why))
	}
	fmt.Fprintf(b, "</g>\n")

	legend := []struct{ color, label string }{
		{colorAvg, "average"}, {colorP99, "p99"}, {colorErr, "error rate (right axis)"}, {grey, "paper (Node.js + Redis + RabbitMQ)"},
	}
	lx := float64(padL)
	for _, l := range legend {
		fmt.Fprintf(b, `<rect x="%.0f" y="%d" width="12" height="12" fill="%s"/><text x="%.0f" y="%d">%s</text>`+"\n", lx, 42, l.color, lx+16, 52, esc(l.label))
		lx += 30 + float64(len(l.label))*6.5
	}
	fmt.Fprintf(b, "</svg>\n")
}

func histogramSVG(b *bytes.Buffer, r *Report) {
	var h *Histogram
	what := "latency"
	var step StepReport
	if len(r.Steps) > 0 {
		step = r.Steps[0]
	}
	if r.Scenario == "capacity" || step.LatencyHistogram == nil {
		h, what = step.HandshakeHistogram, "handshake time"
	} else {
		h = step.LatencyHistogram
		if step.Latest != nil {
			what = "age of delivered values" // mode latest
		}
	}
	svgOpen(b, fmt.Sprintf("wspush %s: %s distribution, %d connections", r.Scenario, what, step.Connections))
	if h == nil || h.Count() == 0 {
		fmt.Fprintf(b, `<text id="histogram" x="%d" y="%d">no samples</text>`+"\n</svg>\n", padL, padT+plotH/2)
		return
	}
	// Regroup the histogram's buckets into 10 bins per decade of ms.
	const perDecade = 10
	minMs := math.Max(float64(h.Min())/1e6, 1e-3)
	maxMs := math.Max(float64(h.Max())/1e6, minMs*1.01)
	lo, hi := decadeBounds(minMs, maxMs)
	if lo == hi {
		hi *= 10
	}
	xs := logScale{lo, hi, plotW}
	nbins := int(math.Round(math.Log10(hi/lo))) * perDecade
	bins := make([]uint64, nbins)
	h.Buckets(func(low, width, count uint64) {
		mid := math.Max((float64(low)+float64(width)/2)/1e6, lo)
		i := int(math.Floor(math.Log10(mid/lo) * perDecade))
		bins[min(max(i, 0), nbins-1)] += count
	})
	var top uint64
	for _, c := range bins {
		top = max(top, c)
	}
	ymax := niceCeil(float64(top))
	px := func(v float64) float64 { return padL + xs.at(v) }
	py := func(v float64) float64 { return padT + plotH - v/ymax*plotH }

	fmt.Fprintf(b, `<g id="axes" stroke="#ddd">`+"\n")
	for _, t := range xs.ticks() {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`+"\n", px(t), padT, px(t), padT+plotH)
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", padL, padT, plotW, plotH)
	fmt.Fprintf(b, "</g>\n")
	for _, t := range xs.ticks() {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(t), padT+plotH+18, msLabel(t))
	}
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padL-6, py(v), countLabel(v))
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s, ms (log scale)</text>`+"\n", padL+plotW/2, svgH-20, what)
	fmt.Fprintf(b, `<text transform="translate(22 %d) rotate(-90)" text-anchor="middle">count</text>`+"\n", padT+plotH/2)

	fmt.Fprintf(b, `<g id="histogram" fill="%s">`+"\n", colorAvg)
	binW := float64(plotW) / float64(nbins)
	for i, c := range bins {
		if c == 0 {
			continue
		}
		x0 := padL + float64(i)*binW
		fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%d</title></rect>`+"\n", x0+0.5, py(float64(c)), binW-1, float64(padT+plotH)-py(float64(c)), c)
	}
	fmt.Fprintf(b, "</g>\n")
	marks := []struct {
		id, label string
		q         float64
	}{{"p50", "p50", 0.5}, {"p99", "p99", 0.99}, {"p999", "p99.9", 0.999}}
	for i, m := range marks {
		v := math.Max(float64(h.Quantile(m.q))/1e6, lo)
		x := px(v)
		// Labels go left of their line in the right half, so that they stay
		// inside the chart.
		tx, anchor := x+4, "start"
		if x > padL+plotW/2 {
			tx, anchor = x-4, "end"
		}
		fmt.Fprintf(b, `<g id="%s" stroke="%s" fill="%s"><line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke-dasharray="4 3"/><text x="%.1f" y="%d" text-anchor="%s" stroke="none" paint-order="stroke">%s %s ms</text></g>`+"\n",
			m.id, colorErr, colorErr, x, padT, x, padT+plotH, tx, padT+14+14*i, anchor, m.label, esc(ms(v)))
	}
	fmt.Fprintf(b, `<text x="%d" y="52">avg %s ms, max %s ms, %d samples</text>`+"\n", padL, esc(ms(h.Mean()/1e6)), esc(ms(float64(h.Max())/1e6)), h.Count())
	fmt.Fprintf(b, "</svg>\n")
}
