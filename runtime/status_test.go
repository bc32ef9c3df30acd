package runtime

import "testing"

func TestHealthFromStatus(t *testing.T) {
	tests := []struct{ status, want string }{
		{"Up 5 minutes (unhealthy)", "unhealthy"},
		{"Up 2 seconds (health: starting)", "starting"},
		{"Up About an hour (healthy)", "healthy"},
		{"Up 5 minutes", ""},
		{"Up 5 minutes (Paused)", ""},
		{"Exited (137) 3 seconds ago", ""},
	}
	for _, tt := range tests {
		if got := healthFromStatus(tt.status); got != tt.want {
			t.Errorf("healthFromStatus(%q) = %q, want %q", tt.status, got, tt.want)
		}
	}
}
