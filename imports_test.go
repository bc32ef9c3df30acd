package rtmanager_test

import (
	"bufio"
	"bytes"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/galaxy-platform/rtmanager"

// allowedImports says which of the module's packages a package's non-test code may import: the
// edges point inward, to the root's domain types and rules. Only cmd/manager wires adapters and
// reads config; the store alone reaches the migrations. Tests, test harnesses and hack/ are free.
func allowedImports(pkg string) (allowed []string, free bool) {
	switch {
	case pkg == module:
		return nil, false
	case pkg == module+"/cmd/manager", strings.HasPrefix(pkg, module+"/test/"), strings.HasPrefix(pkg, module+"/hack/"):
		return nil, true
	case pkg == module+"/store":
		return []string{module, module + "/migrations"}, false
	case pkg == module+"/runtime/kube":
		// The second runtime records its operations as the first does (runtime.Ops).
		return []string{module, module + "/runtime"}, false
	default: // controllers, httpapi, publisher, telemetry, sources, coord, runtime, probe, config, migrations, cmd/rtmctl
		return []string{module}, false
	}
}

// TestImports_pointInward fails when a package gains an import of the module that its place in
// the layout forbids (docs/architecture.md, "Layout").
func TestImports_pointInward(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.String())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		pkg, imports := fields[0], fields[1:]
		n++
		allowed, free := allowedImports(pkg)
		if free {
			continue
		}
		for _, imp := range imports {
			if (imp == module || strings.HasPrefix(imp, module+"/")) && !slices.Contains(allowed, imp) {
				t.Errorf("%s imports %s; it may import only %v of the module", strings.TrimPrefix(pkg, module+"/"), imp, allowed)
			}
		}
	}
	if n < 10 {
		t.Fatalf("go list found %d packages; expected the whole module", n)
	}
}

// TestImports_rootUnderOneName fails when a file imports the module's root under another name
// than rtm.
func TestImports_rootUnderOneName(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if imp.Path.Value == `"`+module+`"` && (imp.Name == nil || imp.Name.Name != "rtm") {
				t.Errorf("%s imports the root without the name rtm", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
