package main

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
)

// clientVersion is rtmctl's own version, as version prints it.
type clientVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// serverVersion is the body of GET /version.
type serverVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
	API       string `json:"api"`
}

func (a *app) newVersionCmd() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version [--client]",
		Short: "Print rtmctl's version and the server's",
		Long: `Print rtmctl's version, then the version of the RTM at --server (GET /version): the
rtmanager binary's version, its Go release and platform, and the REST API's version.

When the server cannot be reached or refuses, the client's version is printed, then the error
on stderr, and the exit code is 1. --client prints the client's version only, without asking
the server.`,
		Example: `  rtmctl version
  rtmctl version --client
  rtmctl version -o json
  rtmctl version -o jsonpath='{.server.version}'`,
		Annotations: outputs(jsonOutputs),
		Args:        cobra.NoArgs,
		RunE: act(func(cmd *cobra.Command, args []string) error {
			client := clientVersion{Version: versionString(), GoVersion: goVersion(), Platform: platform()}
			var server *serverVersion
			var serverErr error
			if !clientOnly {
				server, serverErr = a.serverVersion(cmd)
			}
			if a.output.structured() {
				v := struct {
					Client clientVersion  `json:"client"`
					Server *serverVersion `json:"server,omitempty"`
				}{client, server}
				if err := a.printValue(v); err != nil {
					return err
				}
				return serverErr
			}
			fmt.Fprintf(a.stdout, "Client Version: %s (%s, %s)\n", client.Version, client.GoVersion, client.Platform)
			if server != nil {
				fmt.Fprintf(a.stdout, "Server Version: %s (%s, %s, API %s)\n", server.Version, server.GoVersion, server.Platform, server.API)
			}
			return serverErr
		}),
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print the client's version only")
	return cmd
}

// serverVersion asks the server for its version.
func (a *app) serverVersion(cmd *cobra.Command) (*serverVersion, error) {
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	resp, err := a.call(cmd.Context(), c, http.MethodGet, "/version", nil, nil, "")
	if err != nil {
		var ae *apiError
		var f *failure
		if asAPIError(err, &ae, &f) && ae.Status == http.StatusNotFound {
			f.hints = append(f.hints, "this RTM predates GET /version; rtmctl version --client shows the client's version alone")
		}
		return nil, err
	}
	var v serverVersion
	if err := json.Unmarshal(resp.body, &v); err != nil || v.Version == "" {
		return nil, failf("unexpected answer to GET %s/version: %s", apiBase, trunc(string(resp.body), 200))
	}
	return &v, nil
}
