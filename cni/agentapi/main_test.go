package agentapi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// pluginEnv makes the test binary play a plugin (see pluginProcess) instead of running tests.
const pluginEnv = "AGENTAPI_TEST_PLUGIN_SOCKET"

// TestMain fails the package when its tests leave goroutines or file descriptors behind.
func TestMain(m *testing.M) {
	if sock := os.Getenv(pluginEnv); sock != "" {
		os.Exit(pluginProcess(sock))
	}
	os.Exit(testutil.CheckMain(m, 5*time.Second))
}

// pluginProcess calls the agent at sock as the plugin does, says "answered" on stdout once it
// has its answer and has hung up, then exits only when its stdin closes.
func pluginProcess(sock string) int {
	if _, err := NewClient(sock, 10*time.Second).Call(context.Background(), OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"}); err != nil {
		fmt.Fprintln(os.Stderr, "call:", err)
		return 1
	}
	fmt.Println("answered")
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return 0
}
