// Command ambit-cni is Ambit's chained CNI plugin (see package plugin). The container
// runtime runs it with the CNI environment and the plugin's config on stdin.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/cni/plugin"
)

func main() {
	p := &plugin.Plugin{Stdout: os.Stdout}
	if err := skel.PluginMainFuncsWithError(p.Funcs(), plugin.Versions, plugin.About); err != nil {
		if perr := err.Print(); perr != nil {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
