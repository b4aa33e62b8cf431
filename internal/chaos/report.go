package chaos

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// Table formats reports as the suite's table.
func Table(reps []Report) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "fault\tsubscribers\tpublished\tdelivered\tlost\tduplicated\treordered\tresets\trecovery\tviolations\t")
	for _, r := range reps {
		rec := "-"
		if r.Recovery >= 0 {
			rec = r.Recovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t\n", r.Fault, r.Subs, r.Published, r.Delivered,
			r.Lost, r.Duplicated, r.Reordered, r.Resets, rec, len(r.Violations))
	}
	w.Flush()
	return b.String()
}
