// Command echo is the Ambit end-to-end test application. "echo server"
// answers HTTP/1.1, h2c, gRPC and TCP requests with the identity of its pod;
// "echo client" sends requests and prints a JSON summary of who answered.
// See README.md for the flags and the JSON formats.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage:
  echo server [--http PORTS] [--grpc PORTS] [--tcp PORTS] [identity flags]
  echo client --url URL [--count N] [--protocol http|h2c|grpc|tcp] ...
Run "echo server -h" or "echo client -h" for the flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	var code int
	switch os.Args[1] {
	case "server":
		code = runServer(ctx, os.Args[2:], slog.New(slog.NewTextHandler(os.Stderr, nil)))
	case "client":
		code = runClient(ctx, os.Args[2:], os.Stdout, os.Stderr)
	default:
		fmt.Fprint(os.Stderr, usage)
		code = 2
	}
	stop()
	os.Exit(code)
}
