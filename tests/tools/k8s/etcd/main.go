// Command etcd runs the etcd server pinned by this module (Debian's etcd is too old for the
// pinned kube-apiserver's watches).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
