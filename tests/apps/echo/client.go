package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"

	"github.com/ambit-mesh/ambit/tests/apps/echo/echo"
)

// runClient sends the requests, prints the summary to stdout and returns the
// exit code: 0 if every request succeeded, 1 if one failed, 2 for bad flags.
func runClient(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseClientFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	sum, err := echo.Run(ctx, cfg)
	if sum.Total == 0 && err != nil {
		fmt.Fprintf(stderr, "echo client: %v\n", err)
		return 2
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if encErr := enc.Encode(sum); encErr != nil {
		fmt.Fprintf(stderr, "echo client: writing summary: %v\n", encErr)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "echo client: %v\n", err)
		return 1
	}
	return 0
}

func parseClientFlags(args []string, stderr io.Writer) (echo.ClientConfig, error) {
	cfg := echo.DefaultClientConfig()
	cfg.Headers = http.Header{}
	fs := flag.NewFlagSet("echo client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.URL, "url", "", "target: http(s)://host:port/path, grpc://host:port or tcp://host:port")
	fs.StringVar(&cfg.CACert, "cacert", "", "PEM `file` of the CAs that https targets are verified against (default: the system's)")
	fs.IntVar(&cfg.Count, "count", cfg.Count, "number of requests")
	fs.StringVar(&cfg.Protocol, "protocol", "", "http, h2c, grpc or tcp (default from the URL scheme)")
	fs.StringVar(&cfg.Host, "host", "", "Host header / :authority override")
	fs.Func("header", "request header `'Name: value'` (repeatable)", func(s string) error {
		name, value, err := echo.ParseHeader(s)
		if err == nil {
			cfg.Headers.Add(name, value)
		}
		return err
	})
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "timeout of each request")
	fs.Float64Var(&cfg.QPS, "qps", 0, "request rate limit, 0 for none")
	fs.StringVar(&cfg.Payload, "payload", "", "body / payload to send and expect back")
	fs.BoolVar(&cfg.NewConn, "new-conn", false, "open a new connection per request (http, h2c, grpc)")
	fs.IntVar(&cfg.KeepResponses, "responses", cfg.KeepResponses, "how many full responses the summary keeps, -1 for all")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if cfg.URL == "" || fs.NArg() > 0 {
		err := errors.New("want --url and no other arguments")
		fmt.Fprintln(stderr, err)
		fs.Usage()
		return cfg, err
	}
	return cfg, nil
}
