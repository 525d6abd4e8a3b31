// Package deploy carries Ambit's Helm charts (charts/) inside the binaries that install them,
// so `ambitctl install` needs no checkout and renders exactly the charts it was built with.
package deploy

import (
	"embed"
	"io/fs"
)

//go:embed all:charts
var embedded embed.FS

// Charts holds one folder per chart (base, gateway-api, istiod-lite, cni, ztunnel), as in
// deploy/charts.
var Charts fs.FS = mustSub(embedded, "charts")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		// fs.Sub fails only on an invalid path, and "charts" is a constant.
		panic(err)
	}
	return sub
}
