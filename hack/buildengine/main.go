// Command buildengine builds the stand-in engine images the way the tests do
// (testenv.BuildEngineImages), for hack/dev.sh:
//
//	go run ./hack/buildengine galaxy/game 1.4.1 1.4.2 1.4.3 1.5.0 2.0.0
//
// It must run from inside the module (it finds test/engine from the working directory). Versions
// ending in "-sick", and 1.4.3, get an engine whose probe always fails. Up-to-date tags are kept.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: buildengine REPOSITORY VERSION...")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := testenv.BuildEngineImages(ctx, os.Args[1], os.Args[2:]...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, v := range os.Args[2:] {
		sick := ""
		if testenv.IsSickVersion(v) {
			sick = " (probe always fails)"
		}
		fmt.Printf("%s:%s%s\n", os.Args[1], v, sick)
	}
}
