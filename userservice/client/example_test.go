package client_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/userservice/client"
)

// serverURL is the WebSocket URL of the wspush server that TestMain
// starts for the example; in a program it is your server's,
// "ws://host:8080/ws".
var serverURL string

// startExampleServer runs an embedded wspush for the example, where
// plant-7/001 already has a value.
func startExampleServer() (stop func(), err error) {
	a, err := app.New(app.Config{})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	stop = func() { cancel(); <-done }
	serverURL = "ws://" + ln.Addr().String() + "/ws"
	resp, err := http.Post("http://"+ln.Addr().String()+"/api/publish", "application/json",
		strings.NewReader(`{"app":"plant-7","key":"001","data":{"temp":21.5}}`))
	if err != nil {
		stop()
		return nil, err
	}
	resp.Body.Close()
	return stop, nil
}

// Subscribe to a key and print its first value: the latest one, since the
// subscribe has no since. The client reconnects and resumes on its own
// until Close.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: serverURL})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	values := make(chan client.Publication, 16)
	_, err = c.Subscribe(ctx, "plant-7", []string{"001"}, client.SubscribeOptions{}, client.HandlerFuncs{
		Data: func(p client.Publication) { values <- p },
		Reset: func(r client.Reset) {
			log.Printf("%s/%s: values lost (%s), now at seq %d", r.App, r.Key, r.Reason, r.Seq)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	p := <-values
	fmt.Printf("%s/%s seq %d: %s\n", p.App, p.Key, p.Seq, p.Data)
	// Output: plant-7/001 seq 1: {"temp":21.5}
}

// A dashboard needs the newest value of each sensor, not every value: mode
// latest with MaxRate 2 gets at most two values a second per key, always
// the newest, and a phone on a slow link can cap the bytes per second
// with MaxBandwidth, its latest keys skipping values meanwhile.
func Example_latest() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: serverURL, MaxBandwidth: 64 << 10})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	values := make(chan client.Publication, 16)
	_, err = c.Subscribe(ctx, "plant-7", []string{"001"}, client.SubscribeOptions{
		Mode:    client.ModeLatest,
		MaxRate: 2,
	}, client.HandlerFuncs{
		// Seq may jump: the values between were skipped on purpose.
		Data: func(p client.Publication) { values <- p },
	})
	if err != nil {
		log.Fatal(err)
	}
	p := <-values
	fmt.Printf("%s/%s seq %d: %s\n", p.App, p.Key, p.Seq, p.Data)
	// Output: plant-7/001 seq 1: {"temp":21.5}
}
