// Command wspush is the real-time data push server. Every flag has a
// WSPUSH_* environment twin; see wspush --help.
package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/wspush/wspush/internal/app"
)

//go:embed web
var webFS embed.FS

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "wspush:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	opts, err := parseOptions(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(opts.logFormat, opts.logLevel)
	if err != nil {
		return err
	}
	cfg := opts.cfg
	cfg.Logger = log
	if cfg.Dashboard, err = fs.Sub(webFS, "web"); err != nil {
		return fmt.Errorf("dashboard files: %w", err)
	}
	a, err := app.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", opts.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.Demo {
		log.Info("demo: open the dashboard", "url", dashboardURL(ln.Addr(), cfg.TLSCert != ""))
	}
	return a.Run(ctx, ln)
}

func dashboardURL(addr net.Addr, tls bool) string {
	_, port, _ := net.SplitHostPort(addr.String())
	if tls {
		return "https://localhost:" + port + "/"
	}
	return "http://localhost:" + port + "/"
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, ho)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
