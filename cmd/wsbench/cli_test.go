package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/bench"
	"github.com/wspush/wspush/internal/wstest"
)

func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI(t, "", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"capacity", "fanout", "table", "loopback"} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "worker") {
		t.Error("the worker subcommand is internal and should not be listed")
	}
}

func TestScenarioHelp(t *testing.T) {
	for scenario, flags := range map[string][]string{
		"capacity": {"--connections", "--keys-per-conn", "--key-space", "--hold"},
		"fanout":   {"--subscribers", "--keys", "--rate", "--duration", "--source", "--mode", "--max-rate"},
		"table":    {"--steps", "--source", "--duration", "--warmup"},
	} {
		code, out, _ := runCLI(t, "", scenario, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d", scenario, code)
		}
		common := []string{"--url", "--workers", "--source-ips", "--timeout", "--json", "--svg", "--ramp", "--format", "--amqp-url"}
		for _, f := range append(flags, common...) {
			if !strings.Contains(out, f+" ") && !strings.Contains(out, f+"\n") {
				t.Errorf("%s --help lacks %s:\n%s", scenario, f, out)
			}
		}
	}
}

func TestBadUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage"},
		{[]string{"nope"}, `unknown scenario "nope"`},
		{[]string{"capacity", "--connections", "0"}, "--connections 0"},
		{[]string{"capacity", "--connections", "2000000"}, "--connections 2000000"},
		{[]string{"fanout", "--rate", "0"}, "--rate 0"},
		{[]string{"fanout", "--subscribers", "5", "--keys", "6"}, "--keys 6: want 1 to 5"},
		{[]string{"fanout", "--duration", "2h"}, "--duration 2h0m0s"},
		{[]string{"fanout", "--mode", "newest"}, `--mode "newest": want stream or latest`},
		{[]string{"fanout", "--max-rate", "2"}, "--max-rate needs --mode latest"},
		{[]string{"fanout", "--mode", "latest", "--max-rate", "1001"}, "--max-rate 1001"},
		{[]string{"fanout", "--mode", "latest", "--max-rate", "-1"}, "--max-rate -1"},
		{[]string{"fanout", "--mode", "latest", "--source", "amqp"}, "--mode latest needs --source http"},
		{[]string{"table", "--steps", "10,x"}, "--steps"},
		{[]string{"table", "--steps", ""}, "--steps"},
		{[]string{"table", "--source", "kafka"}, `--source: source "kafka": want http, amqp or poller`},
		{[]string{"fanout", "--source", "poller"}, `--source: source "poller": want http or amqp`},
		{[]string{"fanout", "--source", "nope"}, "--source"},
		{[]string{"fanout", "--source", "amqp", "--amqp-url", "amqp://u:pw@10.1.2.3:5672/"}, "--amqp-url: refusing amqp://u:xxxxx@10.1.2.3:5672/"},
		{[]string{"table", "--source", "amqp", "--amqp-url", "amqp://[2001:db8::1]/"}, "refusing"},
		{[]string{"fanout", "--source", "amqp", "--amqp-url", "http://127.0.0.1:5672/"}, "want amqp:// or amqps://"},
		{[]string{"table", "--timeout", "0s"}, "--timeout"},
		{[]string{"capacity", "--url", "ws://10.1.2.3:8080/ws"}, "refusing"},
		{[]string{"capacity", "--url", "http://127.0.0.1:8080/ws"}, "ws://"},
		{[]string{"capacity", "extra"}, "unexpected arguments"},
		{[]string{"capacity", "--no-such-flag"}, "no-such-flag"},
	} {
		code, _, errOut := runCLI(t, "", tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
		if strings.Contains(errOut, ":pw@") {
			t.Errorf("%q: stderr shows the AMQP password: %q", tc.args, errOut)
		}
	}
}

func TestURLFlagRepeats(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var c common
	c.register(fs)
	if got := c.urls.String(); got != "ws://127.0.0.1:8080/ws" {
		t.Fatalf("default %q", got)
	}
	if err := fs.Parse([]string{"--url", "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws", "--url", "ws://127.0.0.1:3/ws"}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.urls.String(), "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws,ws://127.0.0.1:3/ws"; got != want {
		t.Fatalf("--url twice: %q, want %q", got, want)
	}
}

func TestParseSteps(t *testing.T) {
	got, err := parseSteps(" 500, 1500 ,5000,")
	if err != nil || len(got) != 3 || got[0] != 500 || got[2] != 5000 {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "0", "-1", "1,2000000", strings.Repeat("1,", maxSteps+1)} {
		if _, err := parseSteps(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestWorkerSubcommandReportsBadInput(t *testing.T) {
	code, out, _ := runCLI(t, "not json\n", "worker")
	if code != 1 || !strings.Contains(out, `"type":"error"`) {
		t.Fatalf("exit %d, stdout %q; want 1 and an error message", code, out)
	}
}

// startServer runs a wspush process on a loopback port for the test.
func startServer(t *testing.T) string {
	t.Helper()
	base, _, _ := wstest.StartApp(t, app.Config{})
	return wstest.WSURL(base)
}

func checkSVG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
}

func TestCapacityCommand(t *testing.T) {
	url := startServer(t)
	dir := t.TempDir()
	jsonPath, svgPath := filepath.Join(dir, "c.json"), filepath.Join(dir, "c.svg")
	code, out, errOut := runCLI(t, "", "capacity", "--url", url, "--connections", "8", "--hold", "100ms", "--quiet",
		"--json", jsonPath, "--svg", svgPath)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "8 of 8 up, 0 connect errors") {
		t.Errorf("summary:\n%s", out)
	}
	rep, err := bench.ReadJSON(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "capacity" || len(rep.Steps) != 1 || rep.Steps[0].Connected != 8 {
		t.Errorf("report %+v", rep)
	}
	checkSVG(t, svgPath)
}

// TestBinaryWithWorkerProcesses builds wsbench and runs a fanout with two
// worker processes: wsbench re-executing itself with "worker".
func TestBinaryWithWorkerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "wsbench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	url := startServer(t)
	jsonPath, svgPath := filepath.Join(dir, "f.json"), filepath.Join(dir, "f.svg")
	cmd := exec.CommandContext(t.Context(), bin, "fanout", "--url", url, "--workers", "2", "--subscribers", "16",
		"--rate", "10", "--duration", "1s", "--json", jsonPath, "--svg", svgPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("wsbench: %v\n%s", err, out)
	}
	rep, err := bench.ReadJSON(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Steps[0]
	if s.Workers != 2 || s.Connected != 16 || s.Loss.Expected != 10*16 || s.Loss.Received != 10*16 || s.Loss.Lost != 0 || s.ErrorRate != 0 {
		t.Fatalf("workers %d, connected %d, loss %+v, error rate %g\n%s", s.Workers, s.Connected, s.Loss, s.ErrorRate, out)
	}
	checkSVG(t, svgPath)
}
